// Package cluster starts and stops the real processes of a gateway
// deployment on loopback — redis-server (AOF on a given directory), MinIO
// (the binary cached by scripts/testenv.sh) and bin/gateway serve — so that
// fault tests and the soak program can SIGKILL them and start them again on
// the same data. Every process runs in its own process group; Kill and Stop
// end the whole group and wait for it. Nothing here listens beyond
// 127.0.0.1.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MinIO credentials of every MinIO this package starts.
const (
	MinIOAccessKey = "gatewaytest"
	MinIOSecretKey = "gatewaytest-secret"
)

// ErrToolMissing is returned by the lookups when a binary is not installed.
var ErrToolMissing = errors.New("tool missing")

// MinIOBinary returns the MinIO binary cached by scripts/testenv.sh:
// $GATEWAY_TEST_TOOLS/minio, else ${GATEWAY_CI_TOOLS:-~/.cache/gateway-ci}/minio.
func MinIOBinary() (string, error) {
	var dirs []string
	if d := os.Getenv("GATEWAY_TEST_TOOLS"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("GATEWAY_CI_TOOLS"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		dirs = append(dirs, filepath.Join(d, "gateway-ci"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".cache", "gateway-ci"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "minio")
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("minio binary not found in %v (run scripts/testenv.sh once to build it): %w", dirs, ErrToolMissing)
}

// RedisBinary returns redis-server from PATH.
func RedisBinary() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not on PATH (apt-get install redis-server): %w", ErrToolMissing)
	}
	return p, nil
}

// BuildGateway builds ./cmd/gateway of the module at moduleDir into out.
func BuildGateway(ctx context.Context, moduleDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/gateway")
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/gateway: %w\n%s", err, b)
	}
	return nil
}

// ModuleRoot walks up from the working directory to the directory holding go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Proc is one started process (and its process group).
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
	log  *os.File
}

// start runs bin with args in its own process group, appending its output
// to logPath.
func start(name, logPath string, env []string, bin string, args ...string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s start %s: %s %s\n", name, time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{}), log: lf}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Proc) Kill() error {
	if p == nil {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not die after SIGKILL", p.Name, p.Pid())
	}
}

// Stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		return p.Kill()
	}
}

// poll calls check every interval until it returns nil, ctx ends, the
// process exits or timeout passes.
func poll(ctx context.Context, p *Proc, timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %v (last check: %v)", p.Name, p.err, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v)", p.Name, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Redis is a redis-server with AOF (appendfsync always) in Dir on Port.
type Redis struct {
	Dir  string
	Port int
	// ClusterEnabled starts it as a Redis Cluster node (nodes.conf in Dir,
	// node timeout 2 s), to be joined by StartRedisCluster.
	ClusterEnabled bool
	mu             sync.Mutex
	proc           *Proc
}

// StartRedis starts redis-server on 127.0.0.1:port (0: a free port) with
// its data in dir, and waits until it answers PING (i.e. has loaded its AOF).
func StartRedis(ctx context.Context, dir string, port int) (*Redis, error) {
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Redis{Dir: dir, Port: port}
	return r, r.Start(ctx)
}

// Start starts the server again on the same directory and port.
func (r *Redis) Start(ctx context.Context) error {
	bin, err := RedisBinary()
	if err != nil {
		return err
	}
	args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.Port), "--dir", r.Dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--daemonize", "no", "--logfile", filepath.Join(r.Dir, "redis.log"),
		"--protected-mode", "no"}
	if r.ClusterEnabled {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
	}
	p, err := start("redis-server", filepath.Join(r.Dir, "redis.stdout"), nil, bin, args...)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
	if err := poll(ctx, p, 30*time.Second, r.ping); err != nil {
		_ = p.Kill()
		return err
	}
	return nil
}

func (r *Redis) ping() error {
	line, err := r.command("PING")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING: %s", strings.TrimSpace(line))
	}
	return nil
}

// command sends one inline command and returns the first line of the
// answer, or the whole bulk string of a bulk answer.
func (r *Redis) command(cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "$") {
		return line, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return line, err
	}
	b := make([]byte, n)
	_, err = io.ReadFull(br, b)
	return string(b), err
}

// RedisCluster is a Redis Cluster of masters without replicas, each a
// Redis with AOF (appendfsync always) in its own directory.
type RedisCluster struct {
	Masters []*Redis
}

// StartRedisCluster starts n cluster nodes with their data under dir,
// joins them with redis-cli --cluster create (no replicas, slots split
// evenly) and waits until every node says cluster_state:ok.
func StartRedisCluster(ctx context.Context, dir string, n int) (*RedisCluster, error) {
	rc := &RedisCluster{}
	var addrs []string
	for i := range n {
		port, err := freeClusterPort()
		if err != nil {
			return nil, err
		}
		r := &Redis{Dir: filepath.Join(dir, strconv.Itoa(i)), Port: port, ClusterEnabled: true}
		if err := os.MkdirAll(r.Dir, 0o755); err != nil {
			return nil, err
		}
		if err := r.Start(ctx); err != nil {
			rc.Kill()
			return nil, err
		}
		rc.Masters = append(rc.Masters, r)
		addrs = append(addrs, r.Addr())
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		rc.Kill()
		return nil, fmt.Errorf("redis-cli not on PATH (apt-get install redis-tools): %w", ErrToolMissing)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		rc.Kill()
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := rc.WaitOK(ctx); err != nil {
		rc.Kill()
		return nil, err
	}
	return rc, nil
}

// freeClusterPort returns a port whose cluster bus port (port + 10000) was
// free too a moment ago.
func freeClusterPort() (int, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := 20000 + ln.Addr().(*net.TCPAddr).Port%20000
		ln.Close()
		a, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}

// WaitOK waits until every running node reports cluster_state:ok.
func (rc *RedisCluster) WaitOK(ctx context.Context) error {
	return poll(ctx, nil, 30*time.Second, func() error {
		for _, r := range rc.Masters {
			info, err := r.command("CLUSTER INFO")
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster not ok", r.Addr())
			}
		}
		return nil
	})
}

// URL is the --redis-url of the cluster: every master as a seed.
func (rc *RedisCluster) URL() string {
	u := "redis://" + rc.Masters[0].Addr()
	for i, r := range rc.Masters[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + r.Addr()
	}
	return u
}

// Kill SIGKILLs every node.
func (rc *RedisCluster) Kill() {
	for _, r := range rc.Masters {
		_ = r.Kill()
	}
}

// Addr is host:port.
func (r *Redis) Addr() string { return fmt.Sprintf("127.0.0.1:%d", r.Port) }

// URL is the --redis-url of database 0.
func (r *Redis) URL() string { return fmt.Sprintf("redis://%s/0", r.Addr()) }

// Proc is the running process (nil after Kill/Stop until Start).
func (r *Redis) Proc() *Proc { r.mu.Lock(); defer r.mu.Unlock(); return r.proc }

// Kill SIGKILLs the server; its AOF stays in Dir.
func (r *Redis) Kill() error { return r.take().Kill() }

// Stop shuts the server down with SIGTERM.
func (r *Redis) Stop() error { return r.take().Stop(10 * time.Second) }

func (r *Redis) take() *Proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.proc
	r.proc = nil
	return p
}

// MinIO is a single-drive MinIO server with its data in Dir.
type MinIO struct {
	Bin  string
	Dir  string
	Port int
	mu   sync.Mutex
	proc *Proc
}

// StartMinIO starts MinIO (bin "" = MinIOBinary) on 127.0.0.1:port (0: a
// free port), data in dir, and waits for /minio/health/ready.
func StartMinIO(ctx context.Context, bin, dir string, port int) (*MinIO, error) {
	if bin == "" {
		var err error
		if bin, err = MinIOBinary(); err != nil {
			return nil, err
		}
	}
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	m := &MinIO{Bin: bin, Dir: dir, Port: port}
	return m, m.Start(ctx)
}

// Start starts MinIO again on the same directory and port.
func (m *MinIO) Start(ctx context.Context) error {
	env := []string{"MINIO_ROOT_USER=" + MinIOAccessKey, "MINIO_ROOT_PASSWORD=" + MinIOSecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1"}
	p, err := start("minio", filepath.Join(m.Dir, "minio.log"), env, m.Bin,
		"server", filepath.Join(m.Dir, "data"), "--address", m.Endpoint(), "--quiet")
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.proc = p
	m.mu.Unlock()
	client := &http.Client{Timeout: time.Second}
	err = poll(ctx, p, 60*time.Second, func() error {
		resp, err := client.Get("http://" + m.Endpoint() + "/minio/health/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		// /minio/health/ready answers 200 while the S3 API still says
		// "Server not initialized yet" (503): wait for an S3 answer
		// (an anonymous ListBuckets is refused with 403 once it is up).
		resp, err = client.Get("http://" + m.Endpoint() + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			return errors.New("S3 API: " + resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = p.Kill()
		return err
	}
	return nil
}

// Endpoint is host:port, the --s3-endpoint.
func (m *MinIO) Endpoint() string { return fmt.Sprintf("127.0.0.1:%d", m.Port) }

// Proc is the running process (nil after Kill/Stop until Start).
func (m *MinIO) Proc() *Proc { m.mu.Lock(); defer m.mu.Unlock(); return m.proc }

// Kill SIGKILLs MinIO.
func (m *MinIO) Kill() error { return m.take().Kill() }

// Stop stops MinIO with SIGTERM.
func (m *MinIO) Stop() error { return m.take().Stop(10 * time.Second) }

func (m *MinIO) take() *Proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.proc
	m.proc = nil
	return p
}

// GatewayConfig describes one bin/gateway serve process.
type GatewayConfig struct {
	Bin  string // the gateway binary
	Name string // --name
	Dir  string // --data-dir and where its log and config go
	Port int    // 0: a free port
	// Config is the --config YAML (empty: none).
	Config string
	// Args are further serve flags, e.g. --redis-url, --s3-endpoint.
	Args []string
}

// Gateway is a running (or killed) bin/gateway serve.
type Gateway struct {
	GatewayConfig
	LogPath string
	mu      sync.Mutex
	proc    *Proc
}

// S3Args returns the --s3-* flags for bucket on m.
func (m *MinIO) S3Args(bucket string) []string {
	return []string{"--s3-endpoint", m.Endpoint(), "--s3-bucket", bucket,
		"--s3-access-key", MinIOAccessKey, "--s3-secret-key", MinIOSecretKey}
}

// NewGateway prepares a gateway (port chosen, config written) without
// starting it, so that a peer's URL can be known before it runs.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.Port == 0 {
		var err error
		if cfg.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	return &Gateway{GatewayConfig: cfg, LogPath: filepath.Join(cfg.Dir, "gateway.log")}, nil
}

// StartGateway is NewGateway then Start (which waits for /readyz).
func StartGateway(ctx context.Context, cfg GatewayConfig) (*Gateway, error) {
	g, err := NewGateway(cfg)
	if err != nil {
		return nil, err
	}
	return g, g.Start(ctx)
}

// Start starts the process and waits until /readyz answers 200.
func (g *Gateway) Start(ctx context.Context) error {
	if err := g.Launch(); err != nil {
		return err
	}
	if err := g.WaitReady(ctx, 60*time.Second); err != nil {
		_ = g.Kill()
		return fmt.Errorf("%s: %w\n%s", g.Name, err, g.LogTail(4000))
	}
	return nil
}

// Launch starts the process without waiting for it to be ready.
func (g *Gateway) Launch() error {
	args := []string{"serve", "--name", g.Name, "--listen", g.Addr(), "--data-dir", filepath.Join(g.Dir, "data")}
	if g.Config != "" {
		p := filepath.Join(g.Dir, "config.yaml")
		if err := os.WriteFile(p, []byte(g.Config), 0o600); err != nil {
			return err
		}
		args = append(args, "--config", p)
	}
	args = append(args, g.Args...)
	p, err := start("gateway "+g.Name, g.LogPath, nil, g.Bin, args...)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.proc = p
	g.mu.Unlock()
	return nil
}

// WaitReady polls /readyz until 200.
func (g *Gateway) WaitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: 3 * time.Second}
	return poll(ctx, g.Proc(), timeout, func() error {
		resp, err := client.Get(g.URL() + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %s: %s", resp.Status, b)
		}
		return nil
	})
}

// Addr is host:port.
func (g *Gateway) Addr() string { return fmt.Sprintf("127.0.0.1:%d", g.Port) }

// URL is the base URL, http://127.0.0.1:port.
func (g *Gateway) URL() string { return "http://" + g.Addr() }

// Proc is the running process (nil after Kill/Stop until Start).
func (g *Gateway) Proc() *Proc { g.mu.Lock(); defer g.mu.Unlock(); return g.proc }

// Kill SIGKILLs the gateway.
func (g *Gateway) Kill() error { return g.take().Kill() }

// Stop stops the gateway with SIGTERM (graceful shutdown).
func (g *Gateway) Stop() error { return g.take().Stop(20 * time.Second) }

func (g *Gateway) take() *Proc {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.proc
	g.proc = nil
	return p
}

// LogTail returns the last n bytes of the gateway's log, without the
// access log lines.
func (g *Gateway) LogTail(n int64) string {
	raw, err := os.ReadFile(g.LogPath)
	if err != nil {
		return ""
	}
	var b []byte
	for line := range strings.SplitAfterSeq(string(raw), "\n") {
		if !strings.Contains(line, `"msg":"request"`) {
			b = append(b, line...)
		}
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// Memory is a process's resident set size now (VmRSS) and at its peak (VmHWM), in bytes.
type Memory struct{ RSS, HWM int64 }

// ProcMemory reads /proc/<pid>/status.
func ProcMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.RSS = v << 10
		case "VmHWM:":
			m.HWM = v << 10
		}
	}
	if m.RSS == 0 && m.HWM == 0 {
		return m, fmt.Errorf("/proc/%d/status has no VmRSS or VmHWM", pid)
	}
	return m, nil
}

// ProcCPU returns the CPU time (user and system) process pid has used so
// far, from /proc/<pid>/stat, whose times are in USER_HZ (100 per second on
// every Linux).
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count the fields after its closing one (field 3 is the state).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	utime, uerr := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, serr := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(uerr, serr); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	const userHZ = 100
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// Memory samples the gateway's memory; an error when it is not running.
func (g *Gateway) Memory() (Memory, error) {
	p := g.Proc()
	if p == nil || p.Exited() {
		return Memory{}, errors.New(g.Name + " is not running")
	}
	return ProcMemory(p.Pid())
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dicom-gateway/gateway/internal/wanproxy"
)

// wanproxyMain runs the WAN emulator on its own until Ctrl-C, e.g. in front
// of a peer gateway:
//
//	go run ./cmd/bench wanproxy -listen 127.0.0.1:9081 -target 127.0.0.1:8081 -rtt 20ms -mbit 1000
func wanproxyMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	target := fs.String("target", "", "host:port every connection is forwarded to (required)")
	var cfg wanproxy.Config
	fs.DurationVar(&cfg.RTT, "rtt", 20*time.Millisecond, "round-trip time: each direction delays every byte by half of it")
	fs.Float64Var(&cfg.Mbit, "mbit", 1000, "bandwidth of each direction in Mbit/s, shared by all connections (0: unlimited)")
	fs.IntVar(&cfg.Buffer, "buffer", 0, "bytes held per connection and direction (0: bandwidth-delay product + 1 MiB)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: bench wanproxy -target host:port [-listen addr] [-rtt 20ms] [-mbit 1000]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *target == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	p, err := wanproxy.Listen(*listen, *target, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "wanproxy:", err)
		return 1
	}
	fmt.Fprintf(stderr, "wanproxy: %s → %s, RTT %s, %g Mbit/s per direction; Ctrl-C stops\n", p.Addr(), *target, cfg.RTT, cfg.Mbit)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	if err := p.Close(); err != nil {
		fmt.Fprintln(stderr, "wanproxy:", err)
		return 1
	}
	return 0
}

// Command gateway is the DICOM transfer gateway: one binary that serves
// DICOMweb and the admin API (gateway serve) and the command-line tools that
// talk to it or to its storage (store, reindex, transfer, audit, retention).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/gin-gonic/gin"
)

const usage = `gateway: DICOM transfer gateway

Usage:
  gateway serve [flags]          run the gateway (gateway serve -h for flags)
  gateway store --url U PATH...  send files or directories by STOW-RS
  gateway transfer …             create, list, show, cancel, retry transfers
  gateway audit verify           check the audit log's hash chain
  gateway reindex [serve flags]  rebuild the index from object storage
  gateway retention plan [serve flags]  what the retention policy would delete now
  gateway new-token NAME ROLE... make a bearer token and its auth.tokens entry
  gateway hash-password          bcrypt a password (stdin) for auth.basic
  gateway version                print the version

Every serve flag can also be set as GATEWAY_<NAME> (e.g. GATEWAY_REDIS_URL).
`

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// commands maps each subcommand to its entry point. Each takes its own
// arguments and writes to stdout/stderr.
var commands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"serve":         runServe,
	"store":         runStore,
	"reindex":       runReindex,
	"new-token":     runNewToken,
	"hash-password": runHashPassword,
	"healthcheck":   runHealthcheck,
	"transfer":      runTransfer,
	"audit":         runAudit,
	"retention":     runRetention,
	"version": func(_ context.Context, _ []string, stdout, _ io.Writer) error {
		fmt.Fprintln(stdout, version)
		return nil
	},
}

func main() {
	// gin's debug mode lists every route and warns on stdout: that is for
	// developing gin apps. Set once, here, for the whole process.
	gin.SetMode(gin.ReleaseMode)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		if os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
			fmt.Fprint(os.Stdout, usage)
			return
		}
		fmt.Fprintf(os.Stderr, "gateway: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err := cmd(ctx, os.Args[2:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "gateway %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

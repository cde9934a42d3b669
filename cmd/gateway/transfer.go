package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
)

const transferUsage = `Usage:
  gateway transfer create --study UID --to PEER [--urgent]
  gateway transfer list [--state S] [--study UID] [--to PEER] [--incoming]
  gateway transfer show ID [--watch]
  gateway transfer cancel ID
  gateway transfer retry ID
  gateway transfer peers

Common flags (also GATEWAY_URL, GATEWAY_TOKEN):
  --url    the gateway's base URL (default http://127.0.0.1:8080)
  --token  a bearer token with role transfer (admin for cancel and retry)
  --json   print the API's JSON instead of text
`

// transferCLI talks to a gateway's admin API.
type transferCLI struct {
	api    *client.Client
	json   bool
	stdout io.Writer
}

// runTransfer is the gateway transfer subcommand.
func runTransfer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, transferUsage)
		return nil
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("transfer "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli := &transferCLI{stdout: stdout}
	base := fs.String("url", envOr("GATEWAY_URL", "http://127.0.0.1:8080"), "gateway base URL")
	token := fs.String("token", os.Getenv("GATEWAY_TOKEN"), "bearer token")
	fs.BoolVar(&cli.json, "json", false, "print JSON")
	study := fs.String("study", "", "Study Instance UID")
	to := fs.String("to", "", "destination peer")
	urgent := fs.Bool("urgent", false, "send before normal transfers")
	state := fs.String("state", "", "list: only this state")
	incoming := fs.Bool("incoming", false, "list: transfers received from peers")
	watch := fs.Bool("watch", false, "show: follow progress until the transfer ends")
	interval := fs.Duration("interval", time.Second, "show --watch: refresh interval")
	// Flags may follow the ID (gateway transfer show ID --watch).
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	cli.api = client.New(*base)
	cli.api.Token = *token
	cli.api.HTTP = &http.Client{Timeout: time.Minute}
	needID := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("transfer %s needs one transfer ID", sub)
		}
		return pos[0], nil
	}
	switch sub {
	case "create":
		if *study == "" || *to == "" {
			return errors.New("transfer create needs --study UID and --to PEER")
		}
		p := gateway.PriorityNormal
		if *urgent {
			p = gateway.PriorityUrgent
		}
		t, err := cli.api.CreateTransfer(ctx, gateway.CreateTransfer{StudyUID: *study, Destination: *to, Priority: p})
		if err != nil {
			return err
		}
		return cli.printTransfer(t)
	case "list":
		ts, err := cli.api.ListTransfers(ctx, client.TransferQuery{State: *state, StudyUID: *study, Destination: *to, Incoming: *incoming})
		if err != nil {
			return err
		}
		return cli.printList(ts)
	case "show":
		id, err := needID()
		if err != nil {
			return err
		}
		if *watch {
			return cli.watch(ctx, id, *interval)
		}
		t, err := cli.api.Transfer(ctx, id)
		if err != nil {
			return err
		}
		return cli.printTransfer(t)
	case "cancel", "retry":
		id, err := needID()
		if err != nil {
			return err
		}
		action := cli.api.CancelTransfer
		if sub == "retry" {
			action = cli.api.RetryTransfer
		}
		t, err := action(ctx, id)
		if err != nil {
			return err
		}
		return cli.printTransfer(t)
	case "peers":
		peers, err := cli.api.Peers(ctx)
		if err != nil {
			return err
		}
		if cli.json {
			return json.NewEncoder(cli.stdout).Encode(map[string]any{"peers": peers})
		}
		tw := tabwriter.NewWriter(cli.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tURL\tAUTH\tGATEWAY")
		for _, p := range peers {
			fmt.Fprintf(tw, "%v\t%v\t%v\t%v\n", p.Name, p.URL, p.Auth, p.Gateway)
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown transfer command %q\n\n%s", sub, transferUsage)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (c *transferCLI) printList(ts []*gateway.Transfer) error {
	if c.json {
		return json.NewEncoder(c.stdout).Encode(map[string]any{"transfers": ts})
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTUDY\tPEER\tPRIORITY\tSTATE\tSENT\tBYTES\tATTEMPTS\tCREATED")
	for _, t := range ts {
		peer := t.Destination
		if t.Direction == gateway.DirectionIncoming {
			peer = "from " + t.Source
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%d\t%s\n", t.ID, t.StudyUID, peer, t.Priority, t.State,
			t.InstancesSent, t.InstancesTotal, humanBytes(t.BytesSent), t.Attempts, t.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func (c *transferCLI) printTransfer(t *gateway.Transfer) error {
	if c.json {
		return json.NewEncoder(c.stdout).Encode(t)
	}
	w := c.stdout
	fmt.Fprintf(w, "transfer     %s (%s)\n", t.ID, t.Direction)
	fmt.Fprintf(w, "study        %s\n", t.StudyUID)
	fmt.Fprintf(w, "from → to    %s → %s\n", t.Source, t.Destination)
	fmt.Fprintf(w, "state        %s (priority %s, attempt %d)\n", t.State, t.Priority, t.Attempts)
	fmt.Fprintf(w, "progress     %s %d/%d instances, %s\n", bar(t.InstancesSent, t.InstancesTotal, 30), t.InstancesSent, t.InstancesTotal, humanBytes(t.BytesSent))
	if t.InstancesFailed > 0 {
		fmt.Fprintf(w, "refused      %d instances\n", t.InstancesFailed)
	}
	if t.Verified != nil {
		fmt.Fprintf(w, "verified     %v (%s)\n", *t.Verified, t.Verification)
	}
	if t.LastError != "" {
		fmt.Fprintf(w, "last error   %s\n", t.LastError)
	}
	if t.NextAttemptAt != nil {
		fmt.Fprintf(w, "next attempt %s\n", t.NextAttemptAt.Local().Format(time.DateTime))
	}
	fmt.Fprintf(w, "created      %s\n", t.CreatedAt.Local().Format(time.DateTime))
	if t.CompletedAt != nil {
		fmt.Fprintf(w, "completed    %s\n", t.CompletedAt.Local().Format(time.DateTime))
	}
	for _, f := range t.Failures {
		fmt.Fprintf(w, "  refused %s: %s\n", f.SOPInstanceUID, f.Reason)
	}
	return nil
}

// watch redraws the progress line until the transfer ends or ctx does.
func (c *transferCLI) watch(ctx context.Context, id string, every time.Duration) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		t, err := c.api.Transfer(ctx, id)
		if err != nil {
			return err
		}
		if t.State.Terminal() {
			fmt.Fprintln(c.stdout)
			return c.printTransfer(t)
		}
		fmt.Fprintf(c.stdout, "\r%s %-9s %s %d/%d %s   ", t.ID, t.State, bar(t.InstancesSent, t.InstancesTotal, 30), t.InstancesSent, t.InstancesTotal, humanBytes(t.BytesSent))
		select {
		case <-ctx.Done():
			fmt.Fprintln(c.stdout)
			return nil
		case <-tick.C:
		}
	}
}

func bar(done, total, width int) string {
	filled := 0
	if total > 0 {
		filled = min(width, done*width/total)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

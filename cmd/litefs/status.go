package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// runStatus is `litefs status`: the node's role, its primary, positions,
// lag and replicas. It exits 1 when the node is unhealthy (see
// replica.NodeInfo.Health) and 2 when it cannot be reached.
func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("litefs-status", flag.ContinueOnError)
	url := fs.String("url", "http://localhost"+DefaultHTTPAddr, "API URL of the node")
	asJSON := fs.Bool("json", false, "print /info as JSON")
	maxLag := fs.Duration("max-lag", 10*time.Second, "a replica further behind than this is unhealthy")
	flags := addClientFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	client, err := flags.client()
	if err != nil {
		return err
	}
	info, err := client.Info(ctx, *url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "litefs status:", err)
		return &ExitError{Code: 2}
	}
	health := info.Health(*maxLag)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(info); err != nil {
			return err
		}
	} else {
		printStatus(stdout, info, health)
	}
	if health != nil {
		return &ExitError{Code: 1}
	}
	return nil
}

func printStatus(w io.Writer, info replica.NodeInfo, health error) {
	role := "replica"
	if info.Primary {
		role = "primary"
	}
	fmt.Fprintf(w, "node:     %s (%s)\n", info.Node, role)
	switch {
	case info.Primary && info.WritesUntil != nil:
		fmt.Fprintf(w, "lease:    held; writes stop at %s unless renewed\n", info.WritesUntil.Format(time.RFC3339Nano))
	case info.Primary:
		fmt.Fprintln(w, "lease:    held; it does not expire (static)")
	case info.Connected:
		fmt.Fprintf(w, "primary:  %s at %s, connected since %s, lag %.3fs\n", info.PrimaryHostname, info.PrimaryURL, info.ConnectedSince.Format(time.RFC3339), info.LagSeconds)
	default:
		fmt.Fprintf(w, "primary:  not connected (following %q) since %s\n", info.PrimaryURL, info.ConnectedSince.Format(time.RFC3339))
	}
	if health != nil {
		fmt.Fprintf(w, "health:   UNHEALTHY: %v\n", health)
	} else {
		fmt.Fprintln(w, "health:   ok")
	}
	if p := info.Proxy; p != nil {
		state := "healthy"
		if !p.Healthy {
			state = "unhealthy"
		}
		fmt.Fprintf(w, "proxy:    %s (%s): %s\n", p.URL, state, p.Reason)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nDATABASE\tPOSITION\tPRIMARY'S")
	for _, name := range sortedKeys(info.Positions) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, info.Positions[name], info.PrimaryPositions[name])
	}
	if len(info.Replicas) > 0 {
		fmt.Fprintln(tw, "\nREPLICA\tCANDIDATE\tCONNECTED SINCE\tPOSITIONS SENT")
		for _, r := range info.Replicas {
			fmt.Fprintf(tw, "%s\t%v\t%s\t%v\n", r.Node, r.Candidate, r.Since.Format(time.RFC3339), r.Positions)
		}
	}
	_ = tw.Flush()
	for _, a := range info.Aside {
		fmt.Fprintf(w, "kept aside: %s\n", a)
	}
}

func sortedKeys(m map[string]string) []string {
	a := make([]string, 0, len(m))
	for k := range m {
		a = append(a, k)
	}
	sort.Strings(a)
	return a
}

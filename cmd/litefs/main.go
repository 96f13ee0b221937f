// Command litefs mounts SQLite databases through FUSE and turns every
// transaction into a checksummed LTX file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Version is set at build time.
var Version = "development"

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		var exit *ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.Code)
		}
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "litefs:", err)
		}
		os.Exit(1)
	}
}

// ExitError carries the exit code of the exec'd command.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

func run(ctx context.Context, args []string) error {
	cmd, rest := "mount", args
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "mount":
		c := NewMountCommand()
		if err := c.ParseFlags(rest); err != nil {
			return err
		}
		// The first SIGINT/SIGTERM stops litefs (or goes to the exec'd
		// command, which stops it by exiting).
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sigs)
		c.Signals = sigs
		runErr := c.Run(ctx)
		if err := c.Close(); runErr == nil {
			runErr = err
		}
		return runErr
	case "version":
		fmt.Println("litefs", Version)
		return nil
	case "help", "-h", "--help":
		usage()
		return nil
	default:
		usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `litefs replicates SQLite databases through a FUSE mount.

Usage:

	litefs mount [-config PATH]   mount the databases (default command)
	litefs version                print the version

The config is read from -config, else ./litefs.yml, else /etc/litefs.yml.
`)
}

// Command perf measures a relay under a synthetic AT Protocol network: fake
// PLC and PDS hosts with real signed commits, a consumer fleet that checks
// ordering and latency, a live progress line, and a report directory
// (results.json, report.md, SVG charts).
//
//	go run ./cmd/perf                 # ~60 s demo against an in-process relay
//	go run ./cmd/perf -smoke          # a few seconds; exit 1 on gaps, duplicates or missing files
//	go run ./cmd/perf -soak           # 10 minutes, 2,000 ev/s, 200 consumers; exit 1 unless RSS, heap, goroutines stay flat
//	go run ./cmd/perf -hosts 100 -accounts 100 -rate 2000 -consumers 200
//	go run ./cmd/perf -target-crawl http://127.0.0.1:3000/xrpc/com.atproto.sync.requestCrawl \
//	    -target-firehose ws://127.0.0.1:3000/xrpc/com.atproto.sync.subscribeRepos \
//	    -target-metrics http://127.0.0.1:3001/metrics -target-pid 1234 -plc-addr 127.0.0.1:2582
//
// By default the relay runs in this process, in a temporary directory,
// with loopback hosts allowed and the fake PLC as its directory. Relay,
// PDS fleet and consumer fleet then share the machine's cores and this
// process; the report splits goroutines and CPU between relay and harness
// with pprof labels. An external relay is measured by its URLs; it must
// allow insecure hosts and use the fake PLC (-plc-addr fixes its address).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the run failed or a smoke check did not hold
	exitUsage   = 2
	exitTimeout = 3 // interrupted
)

// run parses args, runs the chosen scenario and writes the report. It
// returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		fmt.Fprintln(stderr, "perf:", err)
		return exitUsage
	}
	res, err := execute(ctx, opts, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "perf:", err)
		if ctx.Err() != nil {
			return exitTimeout
		}
		return exitFailed
	}
	if opts.smoke {
		if problems := smokeCheck(res, opts.out); len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintln(stderr, "perf: smoke:", p)
			}
			return exitFailed
		}
		fmt.Fprintln(stdout, "smoke: ok")
	}
	if opts.soak {
		if problems := soakReport(res, opts.out, stdout); len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintln(stderr, "perf: soak:", p)
			}
			return exitFailed
		}
		fmt.Fprintln(stdout, "soak: ok")
	}
	return exitOK
}

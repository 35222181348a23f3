// Package bench holds the whole-relay benchmarks: the ingest pipeline from
// fake PDS hosts to consumers, relay-level fan-out, the cost of idle
// consumers, and replay from the event log. Each starts a real relay in
// this process (perf/inproc) on loopback.
//
// Fan-out and idle consumers run their consumers in a child process (this
// test binary re-executed), so the figures measured here (heap,
// goroutines, CPU from getrusage) are the relay's alone and need no
// subtraction of the clients' cost; the child reports its own CPU.
//
//	go test -run '^$' -bench . -benchtime 2000x .        # all, short
//	go test -run '^$' -bench Pipeline -benchtime 5000x .
//	go test -run '^$' -bench Fanout -benchtime 200x .
//	go test -run '^$' -bench IdleConsumers -benchtime 1x .
//	go test -run '^$' -bench Replay -benchtime 100000x .
package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	"github.com/gobwas/ws"
	"github.com/ipfs/go-cid"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/perf/inproc"
	"github.com/relay/relay/relay"
)

// Benchmark shape and limits.
const (
	// pipelineHosts x pipelineAccounts is the pipeline benchmark's network.
	pipelineHosts    = 10
	pipelineAccounts = 10
	// fanoutBlocks is the blocks size of a fan-out event: its frame is
	// about 1 KB.
	fanoutBlocks = 900
	// readerDialConcurrency bounds the child's simultaneous handshakes.
	readerDialConcurrency = 64
	// readerBuffer is a child consumer's read buffer: small, like a
	// cheap client.
	readerBuffer = 2 << 10
	// benchWait bounds every wait for the relay or the child.
	benchWait = 2 * time.Minute
	// pollEvery is how often waits poll.
	pollEvery = 2 * time.Millisecond
)

// Environment of the reader child process.
const (
	envReaders    = "RELAY_BENCH_READERS"     // consumer count; set = child mode
	envReaderURL  = "RELAY_BENCH_READER_URL"  // subscribeRepos URL
	envReaderIdle = "RELAY_BENCH_READER_IDLE" // "1": connect and hold, read nothing
)

func TestMain(m *testing.M) {
	// indigo's commit verification logs every first commit at INFO.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if os.Getenv(envReaders) != "" {
		os.Exit(readerMain())
	}
	os.Exit(m.Run())
}

// startRelay starts an in-process relay with the given adjustments and
// closes it when b ends.
func startRelay(b *testing.B, plcURL string, configure func(*relay.Config)) *inproc.Relay {
	b.Helper()
	var ir *inproc.Relay
	var err error
	pprof.Do(context.Background(), pprof.Labels(inproc.LabelKey, inproc.LabelHarness), func(ctx context.Context) {
		ir, err = inproc.Start(ctx, inproc.Options{PLCURL: plcURL, Configure: configure})
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), benchWait)
		defer cancel()
		if err := ir.Close(ctx); err != nil {
			b.Error(err)
		}
	})
	return ir
}

// waitUntil polls cond until it holds or benchWait passes.
func waitUntil(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(benchWait)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pollEvery)
	}
}

// relayConsumers is the relay's count of connected consumers.
func relayConsumers(ir *inproc.Relay) int {
	var sb strings.Builder
	ir.Relay().Metrics().WritePrometheus(&sb)
	m, _ := perf.ParsePrometheus(strings.NewReader(sb.String()))
	return int(m["relay_consumers"])
}

// BenchmarkPipeline is the whole in-process pipeline per event: fake PDS
// hosts emit pregenerated signed sync-1.1 commits (20% P-256) as fast as
// the relay takes them; the relay decodes, validates (identity from its
// cache, signature, MST inversion), sequences, appends with fsync, and
// fans out to N consumers. One op is one commit delivered to every
// consumer. allocs/op counts the whole process: PDS writers and consumer
// readers included (both allocate little per frame).
func BenchmarkPipeline(b *testing.B) {
	for _, consumers := range []int{1, 50} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) { benchPipeline(b, consumers) })
	}
}

func benchPipeline(b *testing.B, consumers int) {
	b.StopTimer()
	n, err := perf.StartNetwork(perf.NetworkOptions{Hosts: pipelineHosts, AccountsPerHost: pipelineAccounts, P256Fraction: 0.2})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	ir := startRelay(b, n.PLC.URL(), nil)
	tgt := ir.Target()
	ctx := context.Background()
	if err := perf.CrawlAll(ctx, tgt.RequestCrawlURL, n.Hosts); err != nil {
		b.Fatal(err)
	}
	if err := perf.WaitSubscribed(ctx, n.Hosts, benchWait); err != nil {
		b.Fatal(err)
	}
	fleet, err := perf.StartFleet(ctx, perf.FleetOptions{URL: tgt.FirehoseURL, Consumers: consumers, Cursor: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer fleet.Close()
	waitUntil(b, "consumers enrolled", func() bool { return relayConsumers(ir) == consumers })

	// Warm up: one commit per account, so identities are resolved and
	// cached before the timed phase.
	for _, a := range n.Accounts {
		c, err := a.Commit(1)
		if err != nil {
			b.Fatal(err)
		}
		a.PDS().Emit(perf.Event{Commit: c})
	}
	warm := int64(len(n.Accounts))
	waitUntil(b, "warmup delivered", func() bool { return fleet.Stats().MinCommits >= warm })

	pre, err := n.Pregenerate(perf.PregenOptions{Events: b.N})
	if err != nil {
		b.Fatal(err)
	}
	want := warm + int64(b.N)
	b.ReportAllocs()
	b.SetBytes(pre.Bytes / int64(max(b.N, 1)))
	cpu0 := processCPU()
	b.StartTimer()
	start := time.Now()
	for i := range pre.Frames {
		f := &pre.Frames[i]
		if err := f.PDS.EmitFrame(f.Seq, f.Frame); err != nil {
			b.Fatal(err)
		}
	}
	waitUntil(b, "every event delivered", func() bool { return fleet.Stats().MinCommits >= want })
	el := time.Since(start)
	b.StopTimer()
	cpu := processCPU() - cpu0
	st := fleet.Stats()
	if st.Gaps != 0 || st.Duplicates != 0 {
		b.Fatalf("%d gaps, %d duplicates", st.Gaps, st.Duplicates)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/event")
}

// processCPU is this process's user + system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readerChild is the consumer fleet in a child process.
type readerChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startReaders starts a child process with n consumers of url and waits
// until it says they are all connected. idle consumers never read.
func startReaders(b *testing.B, url string, n int, idle bool) *readerChild {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envReaders+"="+strconv.Itoa(n), envReaderURL+"="+url)
	if idle {
		cmd.Env = append(cmd.Env, envReaderIdle+"=1")
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	rc := &readerChild{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(func() {
		_ = in.Close() // the child exits at end of input
		_ = cmd.Wait()
	})
	if line := rc.line(b); line != "ready" {
		b.Fatalf("reader child: %q", line)
	}
	return rc
}

// line reads one line from the child.
func (rc *readerChild) line(b *testing.B) string {
	b.Helper()
	if !rc.out.Scan() {
		b.Fatalf("reader child ended: %v", rc.out.Err())
	}
	return rc.out.Text()
}

// expect arms the child for n more frames per consumer.
func (rc *readerChild) expect(b *testing.B, n int) {
	b.Helper()
	if _, err := fmt.Fprintf(rc.in, "expect %d\n", n); err != nil {
		b.Fatal(err)
	}
	if line := rc.line(b); line != "armed" {
		b.Fatalf("reader child: %q", line)
	}
}

// done waits until every child consumer got what was expected and
// returns the child's CPU time over the round.
func (rc *readerChild) done(b *testing.B) time.Duration {
	b.Helper()
	line := rc.line(b)
	ns, ok := strings.CutPrefix(line, "done ")
	if !ok {
		b.Fatalf("reader child: %q", line)
	}
	v, err := strconv.ParseInt(ns, 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(v)
}

// fanoutEvents builds n distinct commit bodies with a ~1 KB frame. The
// sequencer sets each body's seq; nothing validates them.
func fanoutEvents(b *testing.B, n int) []relay.Outgoing {
	b.Helper()
	c, err := cid.Decode("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")
	if err != nil {
		b.Fatal(err)
	}
	blocks := make([]byte, fanoutBlocks)
	out := make([]relay.Outgoing, n)
	for i := range out {
		out[i] = relay.Outgoing{Kind: relay.KindCommit, UID: uint64(i%1000 + 1), Body: &comatproto.SyncSubscribeRepos_Commit{
			Repo:   fmt.Sprintf("did:plc:bench%019d", i%1000),
			Rev:    "3lbenchrev222",
			Commit: lexutil.LexLink(c),
			Blocks: blocks,
			Ops:    []*comatproto.SyncSubscribeRepos_RepoOp{},
			Blobs:  []lexutil.LexLink{},
			Time:   "2026-01-01T00:00:00.000Z",
		}}
	}
	return out
}

// BenchmarkFanout is relay-level fan-out: events of about 1 KB submitted
// straight to the sequencer (no validation) and delivered to 1,000 and
// 5,000 loopback consumers in a child process. One op is one event
// delivered to every consumer. deliveries/s counts frames received;
// relay-cpu-ns/delivery is this process's CPU (relay plus the submit
// loop), reader-cpu-ns/delivery the child's; allocs/delivery is this
// process's allocations (the relay's) per delivered frame.
func BenchmarkFanout(b *testing.B) {
	for _, consumers := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) { benchFanout(b, consumers) })
	}
}

func benchFanout(b *testing.B, consumers int) {
	b.StopTimer()
	ir := startRelay(b, "http://127.0.0.1:1", nil)
	rc := startReaders(b, ir.FirehoseURL(), consumers, false)
	waitUntil(b, "consumers enrolled", func() bool { return relayConsumers(ir) == consumers })
	evs := fanoutEvents(b, b.N)
	rc.expect(b, b.N)
	ctx := context.Background()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := processCPU()
	b.StartTimer()
	start := time.Now()
	for i := range evs {
		if err := ir.Relay().Submit(ctx, evs[i]); err != nil {
			b.Fatal(err)
		}
	}
	childCPU := rc.done(b)
	el := time.Since(start)
	b.StopTimer()
	cpu := processCPU() - cpu0
	runtime.ReadMemStats(&ms1)
	deliveries := float64(b.N) * float64(consumers)
	b.ReportMetric(deliveries/el.Seconds(), "deliveries/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "relay-cpu-ns/delivery")
	b.ReportMetric(float64(childCPU.Nanoseconds())/deliveries, "reader-cpu-ns/delivery")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
}

// BenchmarkIdleConsumers measures what idle consumers cost the relay: its
// goroutines, and its heap per consumer (runtime.ReadMemStats HeapAlloc
// after two GCs, before and after the consumers connect). The consumers
// live in a child process, so nothing of the client side is in these
// figures. The measurement is taken once per run of the benchmark
// function whatever b.N (use -benchtime 1x).
func BenchmarkIdleConsumers(b *testing.B) {
	for _, consumers := range []int{100, 5000} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) { benchIdle(b, consumers) })
	}
}

func benchIdle(b *testing.B, consumers int) {
	b.StopTimer()
	ir := startRelay(b, "http://127.0.0.1:1", nil)
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	relayGoroutines := func() int {
		by, err := perf.GoroutinesByLabel(inproc.LabelKey)
		if err != nil {
			b.Fatal(err)
		}
		return by[inproc.LabelRelay]
	}
	// Let the relay's services settle before the baseline.
	time.Sleep(100 * time.Millisecond)
	h0, g0, rel0 := heap(), runtime.NumGoroutine(), relayGoroutines()
	rss0, _ := perf.ReadProc(0)
	b.StartTimer()
	rc := startReaders(b, ir.FirehoseURL(), consumers, true)
	waitUntil(b, "consumers enrolled", func() bool { return relayConsumers(ir) == consumers })
	b.StopTimer()
	_ = rc
	// The HTTP server's handshake goroutines end just after enrolment.
	time.Sleep(100 * time.Millisecond)
	h1, g1, rel1 := heap(), runtime.NumGoroutine(), relayGoroutines()
	rss1, _ := perf.ReadProc(0)
	b.ReportMetric(float64(int64(h1)-int64(h0))/float64(consumers), "heap-B/consumer")
	b.ReportMetric(float64(rss1.RSSBytes-rss0.RSSBytes)/float64(consumers), "rss-B/consumer")
	b.ReportMetric(float64(g1-g0), "goroutines-added")
	b.ReportMetric(float64(rel1), "relay-goroutines")
	b.ReportMetric(float64(rel0), "relay-goroutines-before")
}

// BenchmarkReplay is one consumer reading the event log from cursor 0:
// b.N events of about 1 KB are sequenced first (untimed), with a ring of
// replayRing frames so that nearly all of them come from the log files
// (through the page cache: they were just written). One op is one event
// replayed; MB/s is frame bytes.
func BenchmarkReplay(b *testing.B) {
	const replayRing = 1024
	b.StopTimer()
	ir := startRelay(b, "http://127.0.0.1:1", func(c *relay.Config) { c.RingSize = replayRing })
	ctx := context.Background()
	for _, ev := range fanoutEvents(b, b.N) {
		if err := ir.Relay().Submit(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	head := int64(b.N)
	waitUntil(b, "events sequenced", func() bool { return ir.Relay().Head() >= head })
	b.ReportAllocs()
	b.StartTimer()
	rp, err := perf.MeasureReplay(ctx, perf.ReplayOptions{URL: ir.FirehoseURL(), Head: head, Timeout: benchWait})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if !rp.Complete || rp.Gaps != 0 || rp.Duplicates != 0 {
		b.Fatalf("replay %+v", rp)
	}
	b.SetBytes(rp.Bytes / head)
	b.ReportMetric(rp.FramesPerSec, "events/s")
}

// readerMain is the child process: it connects the consumers, says
// "ready", then for each "expect N" line says "armed", waits until every
// consumer has N more binary frames and says "done <cpu ns>" (its CPU over
// the round). Idle consumers never read. It exits at end of input.
func readerMain() int {
	n, err := strconv.Atoi(os.Getenv(envReaders))
	url := os.Getenv(envReaderURL)
	if err != nil || n < 1 || url == "" {
		fmt.Fprintln(os.Stderr, "reader: bad environment")
		return 2
	}
	idle := os.Getenv(envReaderIdle) == "1"
	readers, err := dialReaders(url, n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		return 1
	}
	var (
		target  atomic.Int64
		reached atomic.Int64
	)
	if !idle {
		for _, r := range readers {
			go r.count(&target, &reached)
		}
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		v, ok := strings.CutPrefix(in.Text(), "expect ")
		k, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || idle {
			fmt.Fprintln(os.Stderr, "reader: bad command", in.Text())
			return 2
		}
		reached.Store(0)
		target.Add(k)
		cpu0 := processCPU()
		fmt.Println("armed")
		for reached.Load() < int64(n) {
			time.Sleep(pollEvery)
		}
		fmt.Printf("done %d\n", (processCPU() - cpu0).Nanoseconds())
	}
	return 0
}

// reader is one cheap consumer: a goroutine reading frame headers and
// discarding payloads.
type reader struct {
	br *bufio.Reader
}

// dialReaders connects n consumers, a bounded number at a time.
func dialReaders(url string, n int) ([]*reader, error) {
	out := make([]*reader, n)
	sem := make(chan struct{}, readerDialConcurrency)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	d := ws.Dialer{ReadBufferSize: readerBuffer, WriteBufferSize: 512}
	for i := range out {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), benchWait)
			defer cancel()
			conn, br, _, err := d.Dial(ctx, url)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			if br == nil {
				br = bufio.NewReaderSize(conn, readerBuffer)
			}
			out[i] = &reader{br: br}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// count reads frames, and adds to reached when its binary frame count
// reaches target.
func (r *reader) count(target, reached *atomic.Int64) {
	var frames int64
	for {
		h, err := ws.ReadHeader(r.br)
		if err != nil {
			return
		}
		if _, err := r.br.Discard(int(h.Length)); err != nil {
			return
		}
		if h.OpCode != ws.OpBinary {
			continue
		}
		frames++
		if frames == target.Load() {
			reached.Add(1)
		}
	}
}

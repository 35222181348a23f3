package relay

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atcrypto"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/persist/meta"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU time per op (all goroutines of the process) and
// the events per second one core sustains at that cost.
func reportCPU(b *testing.B, cpu time.Duration) {
	perOp := float64(cpu.Nanoseconds()) / float64(b.N)
	b.ReportMetric(perOp/1e3, "cpu-µs/op")
	b.ReportMetric(1e9/perOp, "events/s/core")
}

// BenchmarkIngestValidate compares the validation path with the crypto
// ceiling, in one run:
//
//   - k256_verify: one atcrypto K-256 signature verification, the floor of
//     any relay that checks signatures;
//   - process_commit: partition.process for a signed sync-1.1 #commit of a
//     known account (CAR parse, rev and limit checks, signature, MST
//     inversion, account state), then the sequencer (encode once, event
//     log append, group-commit fsync, ring). The timer stops when the last
//     event is durable.
//
// cpu-µs/op counts the CPU of every goroutine (the sequencer's too), so
// events/s/core is what one core sustains; the ratio of the two
// benchmarks' figures is the fraction of the crypto ceiling reached.
//
//	go test ./relay/ -run '^$' -bench BenchmarkIngestValidate -benchtime 4000x
func BenchmarkIngestValidate(b *testing.B) {
	b.Run("k256_verify", func(b *testing.B) {
		priv, err := atcrypto.GeneratePrivateKeyK256()
		if err != nil {
			b.Fatal(err)
		}
		pub, err := priv.PublicKey()
		if err != nil {
			b.Fatal(err)
		}
		msg := []byte("a commit's unsigned bytes are about this long, a hundred-odd bytes of CBOR with DID, rev, data")
		sig, err := priv.HashAndSign(msg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := cpuTime(b)
		for i := 0; i < b.N; i++ {
			if err := pub.HashAndVerify(msg, sig); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpuTime(b)-cpu0)
	})
	// The same verify through the relay's commit verifier (newCommitKey:
	// libsecp256k1 in cgo builds), for comparison; the ratio above stays
	// against atcrypto.
	b.Run("k256_verify_commitkey", func(b *testing.B) {
		priv, err := atcrypto.GeneratePrivateKeyK256()
		if err != nil {
			b.Fatal(err)
		}
		pub, err := priv.PublicKey()
		if err != nil {
			b.Fatal(err)
		}
		key := newCommitKey(pub)
		msg := []byte("a commit's unsigned bytes are about this long, a hundred-odd bytes of CBOR with DID, rev, data")
		sig, err := priv.HashAndSign(msg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := cpuTime(b)
		for i := 0; i < b.N; i++ {
			if err := key.HashAndVerify(msg, sig); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpuTime(b)-cpu0)
	})
	b.Run("process_commit", benchmarkProcessCommit)
}

func benchmarkProcessCommit(b *testing.B) {
	const accounts = 64
	cfg := testConfig(b)
	cfg.FrameWorkers = 1
	r := startRelay(b, cfg)
	ctx := context.Background()
	rec := &meta.Host{Hostname: "pds.bench.test", Status: meta.HostActive}
	if err := r.store.CreateHost(ctx, rec); err != nil {
		b.Fatal(err)
	}
	h := r.hosts.track(rec)

	// Each account's first commit creates it (not measured); then b.N
	// commits, round-robin, are measured.
	var accts []*perf.Account
	infos := map[string]*identInfo{}
	for i := 0; i < accounts; i++ {
		a, err := perf.NewAccount(perf.K256, fmt.Sprintf("b%d.test", i), nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		accts = append(accts, a)
		infos[a.DID] = &identInfo{did: a.DID, key: newCommitKey(a.PublicKey()), pds: h.name, fetched: time.Now()}
	}
	useq := int64(0)
	item := func(c *comatproto.SyncSubscribeRepos_Commit) *ingestItem {
		useq++
		h.tracker.dispatch(useq, 1024)
		return &ingestItem{host: h, useq: useq, did: c.Repo, commit: c, recv: time.Now()}
	}
	commit := func(a *perf.Account) *comatproto.SyncSubscribeRepos_Commit {
		c, err := a.Commit(1 + int(useq%3))
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	// A partition of the benchmark's own: process runs on this goroutine
	// and owns the partition's maps, as a worker would.
	p := &partition{
		ing: r.ing, idents: newIdentCache(identityCacheSize), accounts: newAccountCache(),
		pending: map[string][]*ingestItem{}, unsent: map[string]bool{}, stalled: map[string]bool{},
	}
	for _, a := range accts {
		p.process(item(commit(a)), infos[a.DID])
	}
	waitHead(b, r, accounts)
	items := make([]*ingestItem, b.N)
	for i := range items {
		items[i] = item(commit(accts[i%accounts]))
	}
	drops := r.metrics.Dropped("invalid_commit").Get() + r.metrics.Dropped("inversion_failed").Get()

	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for _, it := range items {
		p.process(it, infos[it.did])
	}
	waitHead(b, r, int64(accounts+b.N))
	b.StopTimer()
	reportCPU(b, cpuTime(b)-cpu0)
	if d := r.metrics.Dropped("invalid_commit").Get() + r.metrics.Dropped("inversion_failed").Get(); d != drops {
		b.Fatalf("%d benchmark commits were dropped", d-drops)
	}
}

// fleetEnv tells the test binary, re-executed by BenchmarkIdleUpstreamHosts,
// to serve that many idle PDS hosts (TestPDSFleetProcess).
const fleetEnv = "RELAY_TEST_PDS_FLEET"

// TestPDSFleetProcess is not a test: it is the PDS fleet of
// BenchmarkIdleUpstreamHosts, run in a child process so that the relay's
// goroutines and memory are measured alone. It prints "host ADDR" per PDS,
// then "ready", and serves until its stdin closes.
func TestPDSFleetProcess(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv(fleetEnv))
	if err != nil || n <= 0 {
		t.Skip("helper process of BenchmarkIdleUpstreamHosts; runs only when " + fleetEnv + " is set")
	}
	out := bufio.NewWriter(os.Stdout)
	for i := 0; i < n; i++ {
		p, err := perf.StartPDS(perf.PDSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		fmt.Fprintln(out, "host", p.Host())
	}
	fmt.Fprintln(out, "ready")
	if err := out.Flush(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// startFleet runs n idle PDS hosts in a child process and returns their
// hostnames; the child stops when the benchmark ends.
func startFleet(b *testing.B, n int) []string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPDSFleetProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), fleetEnv+"="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	var hosts []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if line == "ready" {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return hosts
		}
		if h, ok := strings.CutPrefix(line, "host "); ok {
			hosts = append(hosts, h)
		}
	}
	b.Fatalf("PDS fleet process ended after %d of %d hosts: %v", len(hosts), n, sc.Err())
	return nil
}

// rssBytes is the process's resident set size.
func rssBytes(b *testing.B) int64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkIdleUpstreamHosts measures the relay's goroutines and memory
// with 100 and 3,000 connected, idle upstream hosts. The hosts run in a
// child process (TestPDSFleetProcess), so every goroutine and byte counted
// here is the relay's (plus the test binary's small constant baseline,
// which "goroutines" subtracts: it is measured before the relay starts).
// The hosts are stored before the relay starts, as after a restart, and
// connected by its staggered start (200 per second).
//
//	go test ./relay/ -run '^$' -bench BenchmarkIdleUpstreamHosts -benchtime 1x -timeout 20m
func BenchmarkIdleUpstreamHosts(b *testing.B) {
	for _, n := range []int{100, 3000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			hosts := startFleet(b, n)
			runtime.GC()
			g0, rss0 := runtime.NumGoroutine(), rssBytes(b)

			cfg := testConfig(b)
			r, err := New(cfg, testLogger())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				_ = r.Close(ctx)
			})
			ctx := context.Background()
			for _, h := range hosts {
				if err := r.store.CreateHost(ctx, &meta.Host{Hostname: h, NoSSL: true, Status: meta.HostActive}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			if err := r.Start(testHandlers(r)); err != nil {
				b.Fatal(err)
			}
			deadline := time.Now().Add(time.Duration(n)*time.Second/startConnectsPerSecond + time.Minute)
			for r.hosts.connectedCount() < n {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d hosts connected", r.hosts.connectedCount(), n)
				}
				time.Sleep(50 * time.Millisecond)
			}
			b.StopTimer()
			time.Sleep(time.Second) // let the dialing goroutines end
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			g1, rss1 := runtime.NumGoroutine(), rssBytes(b)
			b.ReportMetric(float64(g1-g0), "goroutines")
			b.ReportMetric(float64(rss1)/(1<<20), "rss-MiB")
			b.ReportMetric(float64(rss1-rss0)/float64(n)/1024, "rss-KiB/host")
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
		})
	}
}

package perf

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func BenchmarkScanFrame(b *testing.B) {
	a, err := NewAccount(K256, "scan.test", nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	c, err := a.Commit(3)
	if err != nil {
		b.Fatal(err)
	}
	frame, err := EncodeEvent(Event{Commit: c}, 123456)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		fi, err := ScanFrame(frame)
		if err != nil || fi.Seq != 123456 {
			b.Fatal(fi, err)
		}
	}
}

func TestScanFrameDoesNotAllocate(t *testing.T) {
	a, err := NewAccount(P256, "alloc.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Commit(2)
	if err != nil {
		t.Fatal(err)
	}
	frame, err := EncodeEvent(Event{Commit: c}, 9)
	if err != nil {
		t.Fatal(err)
	}
	tbl := &EmitTable{slots: map[uint64]int32{eventKeyString(c.Repo, c.Rev): 0}, times: make([]atomic.Int64, 1)}
	tbl.times[0].Store(monoNanos())
	allocs := testing.AllocsPerRun(100, func() {
		fi, err := ScanFrame(frame)
		if err != nil || fi.Seq != 9 {
			t.Fatal(fi, err)
		}
		if _, ok := tbl.Latency(fi.DID, fi.Rev); !ok {
			t.Fatal("no emit time")
		}
	})
	if allocs != 0 {
		t.Fatalf("ScanFrame + latency lookup: %.1f allocations per frame", allocs)
	}
}

func BenchmarkPregenerate(b *testing.B) {
	n, err := StartNetwork(NetworkOptions{Hosts: 10, AccountsPerHost: 10, P256Fraction: 0.2})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	const events = 2000
	var frameBytes int64
	for b.Loop() {
		pre, err := n.Pregenerate(PregenOptions{Events: events})
		if err != nil {
			b.Fatal(err)
		}
		frameBytes += pre.Bytes
	}
	b.ReportMetric(float64(b.N*events)/b.Elapsed().Seconds(), "commits/s")
	b.ReportMetric(float64(frameBytes)/float64(b.N*events), "B/frame")
}

// BenchmarkFleetConsumerCost connects fleetCostConsumers consumers to a
// bare WebSocket server that costs almost nothing per connection, and
// reports the heap + stack and goroutines each consumer adds. Run with
// -benchtime 1x.
func BenchmarkFleetConsumerCost(b *testing.B) {
	const fleetCostConsumers = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if _, err := ws.Upgrade(c); err != nil {
					c.Close()
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	url := "ws://" + ln.Addr().String() + "/xrpc/com.atproto.sync.subscribeRepos"
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		f, err := StartFleet(ctx, FleetOptions{URL: url, Consumers: fleetCostConsumers, Cursor: -1})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		// Let the server goroutines finish their upgrades.
		for {
			mu.Lock()
			n := len(conns)
			mu.Unlock()
			if n >= fleetCostConsumers {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		g1 := runtime.NumGoroutine()
		mem := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
		b.ReportMetric(mem/fleetCostConsumers, "B/consumer")
		b.ReportMetric(float64(g1-g0)/fleetCostConsumers, "goroutines/consumer")
		f.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
	}
}

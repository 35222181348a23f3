package loop

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/relay/relay/wsframe"
)

// fanoutHandler keeps each loop's connections in a list only that loop
// touches after OnOpen, the way the relay's broadcaster would.
type fanoutHandler struct {
	mu     sync.Mutex
	byLoop map[gnet.EventLoop][]*Conn
	opened atomic.Int64
}

func (h *fanoutHandler) OnOpen(c *Conn) {
	h.mu.Lock()
	h.byLoop[c.EventLoop()] = append(h.byLoop[c.EventLoop()], c)
	h.mu.Unlock()
	h.opened.Add(1)
}
func (h *fanoutHandler) OnMessage(*Conn, ws.OpCode, []byte) error { return nil }
func (h *fanoutHandler) OnClose(*Conn, error)                     {}

// BenchmarkFanoutWritev measures broadcasting: N consumers on loopback,
// each op one batch of 16 shared 1 KB compiled frames, written with one
// Execute per loop and one Writev per consumer. The time includes delivery
// to the (in-process) readers.
func BenchmarkFanoutWritev(b *testing.B) {
	const (
		batch  = 16 // frames per Execute
		window = 8  // batches in flight before the writer waits for readers
	)
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			e := startEngine(b, Options{Loops: 2})
			h := &fanoutHandler{byLoop: map[gnet.EventLoop][]*Conn{}}
			url := startServer(b, e, func() Handler { return h })
			var received atomic.Int64
			var readers sync.WaitGroup
			for range n {
				c, _ := rawUpgrade(b, url, nil)
				_ = c.SetReadDeadline(time.Time{})
				readers.Add(1)
				go func() {
					defer readers.Done()
					buf := make([]byte, 64<<10)
					for {
						k, err := c.Read(buf)
						received.Add(int64(k))
						if err != nil {
							return
						}
					}
				}()
			}
			waitFor(b, "consumers", func() bool { return h.opened.Load() == int64(n) })

			frame := wsframe.Compile(make([]byte, 1024))
			frames := make([][]byte, batch)
			scratch := map[gnet.EventLoop][][]byte{}
			for el := range h.byLoop {
				scratch[el] = make([][]byte, batch)
			}
			for i := range frames {
				frames[i] = frame
			}
			var wg sync.WaitGroup
			batchBytes := int64(batch * len(frame) * n)
			b.SetBytes(batchBytes)
			b.ReportAllocs()
			b.ResetTimer()
			sent := int64(0)
			for b.Loop() {
				// Pace by delivery, as the relay's outbound cap would: at
				// most window batches in flight, so queues stay bounded.
				for received.Load() < (sent-window)*batchBytes {
					runtime.Gosched()
				}
				sent++
				for el, conns := range h.byLoop {
					wg.Add(1)
					bufs := scratch[el]
					_ = el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
						for _, c := range conns {
							copy(bufs, frames) // Writev may advance the elements
							if err := c.Writev(bufs); err != nil {
								b.Error(err)
							}
						}
						wg.Done()
						return nil
					}))
				}
				wg.Wait()
			}
			want := int64(b.N) * int64(batch*len(frame)*n)
			waitFor(b, "delivery", func() bool { return received.Load() >= want })
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(int64(b.N)*batch*int64(n)), "ns/delivery")
		})
	}
}

// TestHelperIdleClients is the client side of BenchmarkIdleConns, run in
// a child process so that its memory is not counted: it opens
// $LOOP_IDLE_CLIENTS WebSocket connections to $LOOP_IDLE_URL, prints
// "ready", and holds them until its stdin closes.
func TestHelperIdleClients(t *testing.T) {
	url := os.Getenv("LOOP_IDLE_URL")
	if url == "" {
		t.Skip("only runs as BenchmarkIdleConns' child process")
	}
	n, err := strconv.Atoi(os.Getenv("LOOP_IDLE_CLIENTS"))
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 0, n)
	for range n {
		c, _, _, err := ws.Dial(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// BenchmarkIdleConns reports the heap and goroutines each idle enrolled
// consumer costs the engine, at 100 and 5,000 connections. Run it with
// -benchtime 1x: each run sets up all connections once.
func BenchmarkIdleConns(b *testing.B) {
	for _, n := range []int{100, 5000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			e := startEngine(b, Options{Loops: 2})
			h := &fanoutHandler{byLoop: map[gnet.EventLoop][]*Conn{}}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = e.Upgrade(w, r, h, nil)
			}))
			defer srv.Close()
			url := "ws" + strings.TrimPrefix(srv.URL, "http")

			heap0, g0 := settledHeap()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperIdleClients$")
			cmd.Env = append(os.Environ(), "LOOP_IDLE_URL="+url, "LOOP_IDLE_CLIENTS="+strconv.Itoa(n))
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { stdin.Close(); _ = cmd.Wait() }()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || line != "ready\n" {
				b.Fatalf("child: %q %v", line, err)
			}
			waitFor(b, "enrolment", func() bool { return h.opened.Load() == int64(n) })
			for b.Loop() {
			}
			heap1, g1 := settledHeap()
			b.ReportMetric(float64(heap1-heap0)/float64(n), "heapB/conn")
			b.ReportMetric(float64(g1-g0), "goroutines")
		})
	}
}

func settledHeap() (uint64, int) {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, runtime.NumGoroutine()
}

// TestHelperTLSUpstream is the server side of BenchmarkIdleTLSUpstreams,
// run in a child process: a wss:// server on 127.0.0.1 that sends each
// client one message and then holds the connection. It prints its URL.
func TestHelperTLSUpstream(t *testing.T) {
	if os.Getenv("LOOP_TLS_UPSTREAM") == "" {
		t.Skip("only runs as BenchmarkIdleTLSUpstreams' child process")
	}
	cert, _ := testCert(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := conn.Write(wsframe.AppendFrame(nil, ws.OpBinary, make([]byte, 100), false)); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, conn)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	fmt.Println(strings.Replace(srv.URL, "https", "wss", 1))
	_, _ = io.Copy(io.Discard, os.Stdin)
	srv.CloseClientConnections()
}

// BenchmarkIdleTLSUpstreams reports the heap and goroutines each idle wss://
// upstream costs the engine (TLS state included). Run with -benchtime 1x.
func BenchmarkIdleTLSUpstreams(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			e := startEngine(b, Options{Loops: 2})
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperTLSUpstream$")
			cmd.Env = append(os.Environ(), "LOOP_TLS_UPSTREAM=1")
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { stdin.Close(); _ = cmd.Wait() }()
			url, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			url = strings.TrimSpace(url)

			rec := newRecorder()
			rec.opened, rec.msgs, rec.closed = make(chan *Conn, n), make(chan message, n), make(chan error, n)
			heap0, g0 := settledHeap()
			opts := DialOptions{TLSConfig: &tls.Config{InsecureSkipVerify: true}}
			for range n {
				if _, err := e.Dial(context.Background(), url, opts, rec, nil); err != nil {
					b.Fatal(err)
				}
			}
			for range n {
				rec.waitMsg(b)
			}
			for b.Loop() {
			}
			heap1, g1 := settledHeap()
			b.ReportMetric(float64(heap1-heap0)/float64(n), "heapB/conn")
			b.ReportMetric(float64(g1-g0), "goroutines")
		})
	}
}

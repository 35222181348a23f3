package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/relay"
	"github.com/relay/relay/wsframe"
)

func TestParseConfigEnvAndFlags(t *testing.T) {
	env := map[string]string{
		"RELAY_PORT": "4000", "RELAY_DATA_DIR": "/tmp/x", "RELAY_UPSTREAM": "none",
		"RELAY_ALLOW_INSECURE_HOSTS": "true", "RELAY_RETENTION_HOURS": "5", "FRAME_WORKERS": "3",
	}
	cfg, _, err := parseConfig([]string{"-metrics-port", "127.0.0.1:4001", "-frame-workers", "7"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":4000" || cfg.MetricsListen != "127.0.0.1:4001" || cfg.DataDir != "/tmp/x" || cfg.Upstream != "" ||
		!cfg.AllowInsecureHosts || cfg.Retention != 5*time.Hour || cfg.FrameWorkers != 7 {
		t.Fatalf("unexpected config %+v", cfg)
	}
	if _, _, err := parseConfig(nil, func(k string) string {
		if k == "FRAME_WORKERS" {
			return "many"
		}
		return ""
	}); err == nil {
		t.Fatal("bad FRAME_WORKERS accepted")
	}
}

// relay serve validates the configuration before anything starts.
func TestServeConfigValidates(t *testing.T) {
	if _, _, err := serveConfig(nil, func(string) string { return "" }); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	env := map[string]string{"RELAY_CONSUMER_OUTBOUND_BYTES": "0", "RELAY_CONSUMER_MAX_LAG": "0"}
	_, _, err := serveConfig([]string{"-port", "99999"}, func(k string) string { return env[k] })
	if !errors.Is(err, relay.ErrBadConfig) {
		t.Fatalf("serveConfig = %v, want ErrBadConfig", err)
	}
	for _, want := range []string{"RELAY_CONSUMER_OUTBOUND_BYTES", "RELAY_CONSUMER_MAX_LAG", "RELAY_PORT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type relayProc struct {
	cmd     *exec.Cmd
	api     string
	metrics string
	stderr  *bytes.Buffer
}

// startRelayProc starts the relay binary; env entries (KEY=value) are
// added last, so they override the defaults here.
func startRelayProc(t *testing.T, bin, dataDir, plcURL string, env ...string) *relayProc {
	t.Helper()
	p := &relayProc{api: freePort(t), metrics: freePort(t), stderr: &bytes.Buffer{}}
	p.cmd = exec.Command(bin, "serve")
	p.cmd.Env = append(os.Environ(),
		"RELAY_PORT="+p.api, "RELAY_METRICS_PORT="+p.metrics, "RELAY_DATA_DIR="+dataDir,
		"RELAY_UPSTREAM=none", "RELAY_PLC_HOST="+plcURL, "RELAY_ALLOW_INSECURE_HOSTS=true",
		"RELAY_LOG_LEVEL=warn", "DATABASE_URL=", "RELAY_TRUSTED_DOMAINS=*")
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.metrics + "/_healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			_ = p.cmd.Process.Kill()
			t.Fatalf("relay did not start: %s", p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type received struct {
	seq int64
	did string
	rev string
}

// readCommits reads #commit frames from a subscription into out until the
// connection fails.
func readCommits(conn net.Conn, br *bufio.Reader, mu *sync.Mutex, out *[]received) error {
	var rd io.ReadWriter = conn
	if br != nil {
		rd = struct {
			io.Reader
			io.Writer
		}{io.MultiReader(br, conn), conn}
	}
	for {
		msg, err := wsutil.ReadServerBinary(rd)
		if err != nil {
			return err
		}
		_, t, body, err := wsframe.ParseEventHeader(msg)
		if err != nil {
			return err
		}
		if t != "#commit" {
			return fmt.Errorf("unexpected frame type %q", t)
		}
		var c comatproto.SyncSubscribeRepos_Commit
		if err := c.UnmarshalCBOR(bytes.NewReader(body)); err != nil {
			return err
		}
		mu.Lock()
		*out = append(*out, received{seq: c.Seq, did: c.Repo, rev: c.Rev})
		mu.Unlock()
	}
}

// SIGKILL mid-stream, restart on the same data dir: everything a consumer
// saw before the kill is replayable with the same seq, and seq continues
// without a gap.
func TestKillAndRestartKeepsWhatConsumersSaw(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the relay binary")
	}
	bin := filepath.Join(t.TempDir(), "relay")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	pds, err := perf.StartPDS(perf.PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pds.Close()
	var accounts []*perf.Account
	for i := 0; i < 8; i++ {
		a, err := perf.NewAccount(perf.KeyType(i%2), fmt.Sprintf("u%d.test", i), plc, pds)
		if err != nil {
			t.Fatal(err)
		}
		accounts = append(accounts, a)
	}
	dataDir := t.TempDir()
	p := startRelayProc(t, bin, dataDir, plc.URL())
	defer func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() }()
	crawl(t, p.api, pds.Host())

	conn, br, _, err := ws.Dial(context.Background(), "ws://"+p.api+"/xrpc/com.atproto.sync.subscribeRepos")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var before []received
	readDone := make(chan error, 1)
	go func() { readDone <- readCommits(conn, br, &mu, &before) }()

	// Emit continuously until the kill.
	var stop atomic.Bool
	emitted := make(chan struct{})
	go func() {
		defer close(emitted)
		for i := 0; !stop.Load(); i++ {
			a := accounts[i%len(accounts)]
			c, err := a.Commit(1)
			if err != nil {
				t.Error(err)
				return
			}
			pds.Emit(perf.Event{Commit: c})
			time.Sleep(time.Millisecond)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(before)
		mu.Unlock()
		if n >= 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d events before the kill; relay log:\n%s", n, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	<-readDone
	stop.Store(true)
	<-emitted
	conn.Close()
	mu.Lock()
	seen := append([]received(nil), before...)
	mu.Unlock()
	for i, r := range seen {
		if r.seq != int64(i+1) {
			t.Fatalf("before the kill: frame %d has seq %d", i, r.seq)
		}
	}

	// Restart and replay from the start.
	p2 := startRelayProc(t, bin, dataDir, plc.URL())
	defer func() { _ = p2.cmd.Process.Kill(); _ = p2.cmd.Wait() }()
	conn2, br2, _, err := ws.Dial(context.Background(), "ws://"+p2.api+"/xrpc/com.atproto.sync.subscribeRepos?cursor=0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	var after []received
	go func() { _ = readCommits(conn2, br2, &mu, &after) }()
	// New events after the restart must continue the sequence.
	for i := 0; i < 20; i++ {
		c, err := accounts[i%len(accounts)].Commit(1)
		if err != nil {
			t.Fatal(err)
		}
		pds.Emit(perf.Event{Commit: c})
	}
	last := accounts[19%len(accounts)]
	deadline = time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		done := false
		for _, r := range after {
			if r.did == last.DID && r.rev == last.Rev() {
				done = true
			}
		}
		n := len(after)
		mu.Unlock()
		if done && n >= len(seen)+20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restart: %d events, the last new commit never arrived; log:\n%s", n, p2.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, r := range after {
		if r.seq != int64(i+1) {
			t.Fatalf("after restart: frame %d has seq %d (gap or duplicate)", i, r.seq)
		}
		if i < len(seen) && (r.did != seen[i].did || r.rev != seen[i].rev) {
			t.Fatalf("seq %d replays %s@%s, the consumer saw %s@%s before the kill", r.seq, r.did, r.rev, seen[i].did, seen[i].rev)
		}
	}
	if len(after) < len(seen)+20 {
		t.Fatalf("after restart %d events, want at least %d seen + 20 new", len(after), len(seen))
	}
}

func crawl(t *testing.T, api, host string) {
	t.Helper()
	resp, err := http.Post("http://"+api+"/xrpc/com.atproto.sync.requestCrawl", "application/json", strings.NewReader(`{"hostname":"`+host+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("requestCrawl: %d", resp.StatusCode)
	}
}

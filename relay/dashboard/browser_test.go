package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/relay/relay/perf/inproc"
)

func TestMain(m *testing.M) {
	// indigo's commit verification logs every first commit at INFO.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// chromiumPath finds Debian's chromium (or another Chrome). Outside CI a
// machine without one skips the browser test; in CI (CI=true) it fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed; .ci/run installs Debian's chromium package before the tests")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium); this test fails instead of skipping when CI=true")
	return ""
}

// number parses a rendered figure such as "1,234" or "12.5".
func number(s string) (float64, bool) {
	v, err := strconv.ParseFloat(strings.ReplaceAll(strings.TrimSpace(s), ",", ""), 64)
	return v, err == nil
}

// TestDashboardInBrowser starts the relay against the synthetic network
// (hosts, a trickle of signed commits, consumers, and one host that goes
// away), opens /dash/ in headless Chromium, waits until the numbers move
// and checks what the page shows; then stops the relay and checks that
// the page says so. Screenshots are test artifacts (go test -artifacts).
func TestDashboardInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	live, err := inproc.StartLive(inproc.LiveOptions{Hosts: 4, AccountsPerHost: 3, Consumers: 3, Rate: 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Close() })
	// One host goes away: the relay's redials fail and the host is listed
	// as failing with its last error.
	gone := live.Net.Hosts[3]
	gone.Close()

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1300),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	url := "http://" + live.Relay.Relay().MetricsAddr() + "/dash/"
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("chromium could not open %s: %v", url, err)
	}

	// Wait until the numbers move: events/s in and out > 0, head seq > 0,
	// and the head seq rendered later is higher than the first.
	var firstHead float64
	deadline := time.Now().Add(45 * time.Second)
	for {
		in, out, head := text(t, ctx, "#rate-in"), text(t, ctx, "#rate-out"), text(t, ctx, "#head-seq")
		inV, ok1 := number(in)
		outV, ok2 := number(out)
		headV, ok3 := number(head)
		if ok3 && firstHead == 0 {
			firstHead = headV
		}
		if ok1 && ok2 && ok3 && inV > 0 && outV > 0 && firstHead > 0 && headV > firstHead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("numbers did not move: in %q out %q head %q (first %v) ready %q conn %q",
				in, out, head, firstHead, text(t, ctx, "#ready"), text(t, ctx, "#conn"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if conn := text(t, ctx, "#conn"); !strings.HasPrefix(conn, "live") {
		t.Fatalf("connection line %q", conn)
	}
	if ready := text(t, ctx, "#ready"); ready != "ready" && ready != "not ready" {
		t.Fatalf("readiness shows %q", ready)
	}

	// The failing view (the default) lists the host that went away, with
	// its last error.
	waitText(t, ctx, "#hosts-table tbody", func(s string) bool {
		return strings.Contains(s, gone.Host()) && strings.Contains(s, "refused")
	})

	// The "all" view lists every live host, the busiest with events.
	eval[bool](t, ctx, `(() => { const s = document.getElementById("host-view"); s.value = "all"; s.dispatchEvent(new Event("change")); return true })()`)
	waitText(t, ctx, "#hosts-table tbody", func(s string) bool {
		for _, h := range live.Net.Hosts[:3] {
			if !strings.Contains(s, h.Host()) {
				return false
			}
		}
		return true
	})
	if v, ok := number(text(t, ctx, "#hosts-table tbody tr:first-child td:nth-child(8)")); !ok || v <= 0 {
		t.Fatalf("busiest host received %v events", v)
	}

	// The consumers are listed, one row each.
	waitText(t, ctx, "#consumers-table tbody", func(s string) bool { return strings.Count(s, "127.0.0.1:") >= 3 })
	if n := eval[int](t, ctx, `document.querySelectorAll("#consumers-table tbody tr").length`); n != 3 {
		t.Fatalf("%d consumer rows, want 3: %s", n, text(t, ctx, "#consumers-table tbody"))
	}
	// The chart has its three lines, and the event log is not empty.
	if n := eval[int](t, ctx, `document.querySelectorAll("#chart polyline").length`); n != 3 {
		t.Fatalf("chart has %d lines", n)
	}
	if size := text(t, ctx, "#log-size"); !strings.HasSuffix(size, "B") || size == "0 B" {
		t.Fatalf("event log size %q", size)
	}
	// Let the chart cover a few seconds before the screenshot.
	waitText(t, ctx, "#chart-max", func(s string) bool {
		var secs int
		_, err := fmt.Sscanf(s[strings.Index(s, "·")+len("· "):], "%d s shown", &secs)
		return strings.Contains(s, "·") && err == nil && secs >= 5
	})
	screenshot(t, ctx, "dashboard.png")

	// The relay goes away: the page says it is unreachable and keeps
	// polling.
	if err := live.CloseRelay(); err != nil {
		t.Fatal(err)
	}
	waitText(t, ctx, "#conn", func(s string) bool { return strings.Contains(s, "relay unreachable") })
	screenshot(t, ctx, "dashboard-unreachable.png")
}

// eval runs a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// text is the text content of the first element matching sel ("" if none).
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return strings.TrimSpace(eval[string](t, ctx, `(document.querySelector(`+strconv.Quote(sel)+`) || {}).textContent || ""`))
}

// waitText polls the text of sel until ok holds (20 s at most).
func waitText(t *testing.T, ctx context.Context, sel string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := text(t, ctx, sel)
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never showed what was expected; it shows:\n%s", sel, s)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// screenshot saves the full page into the test's artifact directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", p, len(png))
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relay/relay/perf/inproc"
	"github.com/relay/relay/relay"
)

const testAdminPassword = "s3cret-admin"

// runAdmin runs `relay admin args...` in-process and returns its exit
// status and output. No output may look like a Go crash.
func runAdmin(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := adminMain(args, &out, &errOut, func(k string) string { return env[k] })
	for _, s := range []string{out.String(), errOut.String()} {
		if strings.Contains(s, "goroutine ") || strings.Contains(s, "panic") || strings.Contains(s, ".go:") {
			t.Fatalf("relay admin %v printed something like a stack trace:\n%s", args, s)
		}
	}
	return code, out.String(), errOut.String()
}

// mustAdmin runs the CLI and requires exit status 0.
func mustAdmin(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	code, out, errOut := runAdmin(t, env, args...)
	if code != 0 {
		t.Fatalf("relay admin %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// failAdmin runs the CLI and requires exit status code and a message on
// stderr containing want.
func failAdmin(t *testing.T, env map[string]string, code int, want string, args ...string) {
	t.Helper()
	got, out, errOut := runAdmin(t, env, args...)
	if got != code || !strings.Contains(errOut, want) || out != "" {
		t.Fatalf("relay admin %v: exit %d (want %d)\nstdout: %q\nstderr: %q (want %q)", args, got, code, out, errOut, want)
	}
}

func TestAdminCLIAgainstRelay(t *testing.T) {
	live, err := inproc.StartLive(inproc.LiveOptions{
		Hosts: 2, AccountsPerHost: 2, Consumers: 2, Rate: 40,
		Configure: func(c *relay.Config) { c.AdminPassword = testAdminPassword },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Close() })
	r := live.Relay.Relay()
	// Every account has had an event sequenced, so the relay knows it.
	deadline := time.Now().Add(30 * time.Second)
	for r.Head() < 8 {
		if time.Now().After(deadline) {
			t.Fatalf("relay head %d", r.Head())
		}
		time.Sleep(10 * time.Millisecond)
	}
	env := map[string]string{"RELAY_ADMIN_URL": "http://" + r.Addr(), "RELAY_ADMIN_PASSWORD": testAdminPassword}
	h1, h2 := live.Net.Hosts[0].Host(), live.Net.Hosts[1].Host()

	// hosts list: a table, then --json.
	out := mustAdmin(t, env, "hosts")
	if !strings.HasPrefix(out, "HOSTNAME") || !strings.Contains(out, h1) || !strings.Contains(out, h2) || !strings.Contains(out, "2 hosts: 2 active") {
		t.Fatalf("hosts table:\n%s", out)
	}
	var hosts struct {
		Hosts []adminHost `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(mustAdmin(t, env, "hosts", "list", "-json")), &hosts); err != nil || len(hosts.Hosts) != 2 {
		t.Fatalf("hosts --json: %v %+v", err, hosts)
	}
	if out := mustAdmin(t, env, "hosts", "list", "-status", "blocked"); out != "no hosts with status blocked\n" {
		t.Fatalf("empty filtered list: %q", out)
	}

	// block, unblock, limits.
	if out := mustAdmin(t, env, "hosts", "block", h1); out != h1+": blocked\n" {
		t.Fatalf("block: %q", out)
	}
	if out := mustAdmin(t, env, "hosts", "list", "--status=blocked"); !strings.Contains(out, h1) || strings.Contains(out, h2) {
		t.Fatalf("blocked list:\n%s", out)
	}
	if out := mustAdmin(t, env, "hosts", "unblock", h1); out != h1+": active\n" {
		t.Fatalf("unblock: %q", out)
	}
	if out := mustAdmin(t, env, "hosts", "limits", h2, "-account-limit", "5", "-trusted=true"); out != h2+": account limit 5, trusted true\n" {
		t.Fatalf("limits: %q", out)
	}
	if out := mustAdmin(t, env, "hosts", "reset-cursor", h2); out != h2+": cursor reset to 0 (resubscribed live)\n" {
		t.Fatalf("hosts reset-cursor printed %q", out)
	}
	failAdmin(t, env, 2, "needs -account-limit", "hosts", "limits", h2)
	failAdmin(t, env, 2, "-trusted must be true or false", "hosts", "limits", h2, "-trusted", "maybe")
	failAdmin(t, env, 1, "HostNotFound", "hosts", "block", "nosuch.example.com")
	failAdmin(t, env, 2, "expected a hostname", "hosts", "block")
	failAdmin(t, env, 2, `unknown command "frobnicate"`, "frobnicate")

	// consumers.
	out = mustAdmin(t, env, "consumers")
	if !strings.HasPrefix(out, "ID") || strings.Count(out, "127.0.0.1:") != 2 || !strings.Contains(out, "2 consumers, max lag") {
		t.Fatalf("consumers table:\n%s", out)
	}
	var cons struct {
		Consumers []adminConsumer `json:"consumers"`
	}
	if err := json.Unmarshal([]byte(mustAdmin(t, env, "-json", "consumers")), &cons); err != nil || len(cons.Consumers) != 2 || cons.Consumers[0].Position == 0 {
		t.Fatalf("consumers --json: %v %+v", err, cons)
	}

	// takedown and reverse.
	did := live.Net.Accounts[0].DID
	if out := mustAdmin(t, env, "takedown", did); !strings.HasPrefix(out, did+": takendown, #account at seq ") {
		t.Fatalf("takedown: %q", out)
	}
	if out := mustAdmin(t, env, "takedown", did); out != did+": takendown (unchanged: it already was)\n" {
		t.Fatalf("second takedown: %q", out)
	}
	if out := mustAdmin(t, env, "reverse", did); !strings.HasPrefix(out, did+": active, #account at seq ") {
		t.Fatalf("reverse: %q", out)
	}
	failAdmin(t, env, 1, "RepoNotFound", "takedown", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
	failAdmin(t, env, 1, "BadRequest", "reverse", "not-a-did")

	// bans: empty, add, list, remove, remove again.
	if out := mustAdmin(t, env, "bans"); out != "no banned domains\n" {
		t.Fatalf("empty bans: %q", out)
	}
	if out := mustAdmin(t, env, "bans", "add", "Spam.Example.com"); out != "banned spam.example.com\n" {
		t.Fatalf("bans add: %q", out)
	}
	if out := mustAdmin(t, env, "bans", "list"); out != "DOMAIN\nspam.example.com\n1 banned domains\n" {
		t.Fatalf("bans list: %q", out)
	}
	if out := mustAdmin(t, env, "bans", "remove", "spam.example.com"); out != "unbanned spam.example.com\n" {
		t.Fatalf("bans remove: %q", out)
	}
	failAdmin(t, env, 1, "DomainNotBanned", "bans", "remove", "spam.example.com")

	// A large list: every row is printed, with the count.
	const many = 400
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range many {
		body := fmt.Sprintf(`{"domain":"d%04d.example.net"}`, i)
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+r.Addr()+"/admin/domainBans/add", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAdminPassword)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("ban %d: %d", i, resp.StatusCode)
		}
	}
	out = mustAdmin(t, env, "bans")
	if lines := strings.Count(out, "\n"); lines != many+2 || !strings.HasSuffix(out, fmt.Sprintf("%d banned domains\n", many)) || !strings.Contains(out, "d0399.example.net") {
		t.Fatalf("large bans list: %d lines, tail %q", lines, out[max(0, len(out)-80):])
	}
	var bans struct {
		Domains []string `json:"domains"`
	}
	if err := json.Unmarshal([]byte(mustAdmin(t, env, "bans", "--json")), &bans); err != nil || len(bans.Domains) != many {
		t.Fatalf("bans --json: %v %d", err, len(bans.Domains))
	}

	// Wrong, missing password; flags win over the environment.
	failAdmin(t, env, 1, "wrong admin password", "-password", "nope", "hosts")
	failAdmin(t, map[string]string{"RELAY_ADMIN_URL": env["RELAY_ADMIN_URL"]}, 1, "wants the admin password", "consumers")
	// The metrics port is not the API: a clear hint, not a JSON error.
	failAdmin(t, env, 1, "API port", "-url", "http://"+r.MetricsAddr(), "hosts")
	failAdmin(t, env, 2, "-url must be", "-url", "localhost:3000", "hosts")

	// Unreachable: the relay is gone.
	if err := live.CloseRelay(); err != nil {
		t.Fatal(err)
	}
	failAdmin(t, env, 1, "cannot reach the relay at http://"+r.Addr(), "hosts")
	failAdmin(t, env, 1, "cannot reach the relay", "takedown", did)
}

func TestAdminCLIAdminDisabled(t *testing.T) {
	ir, err := inproc.Start(context.Background(), inproc.Options{PLCURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ir.Close(context.Background()) })
	env := map[string]string{"RELAY_ADMIN_URL": "http://" + ir.Relay().Addr() + "/", "RELAY_ADMIN_PASSWORD": "x"}
	failAdmin(t, env, 1, "admin API is disabled", "bans")
	failAdmin(t, env, 2, "no command given")
	if code, _, errOut := runAdmin(t, env, "-h"); code != 0 || !strings.Contains(errOut, "hosts limits HOST") {
		t.Fatalf("help: %d %s", code, errOut)
	}
}

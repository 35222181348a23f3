package main

// relay admin: a client of a running relay's admin API (/admin/...).
//
//	relay admin [flags] hosts [list]            list hosts
//	relay admin [flags] hosts block HOST        block a host (disconnects it)
//	relay admin [flags] hosts unblock HOST
//	relay admin [flags] hosts limits HOST [-account-limit N] [-trusted=true|false]
//	relay admin [flags] hosts reset-cursor HOST  forget the host's cursor; resubscribe live
//	relay admin [flags] takedown DID            take an account down
//	relay admin [flags] reverse DID             reverse a takedown
//	relay admin [flags] consumers               list firehose consumers
//	relay admin [flags] bans [list]             list domain bans
//	relay admin [flags] bans add DOMAIN
//	relay admin [flags] bans remove DOMAIN
//
// Flags (anywhere on the line): -url ($RELAY_ADMIN_URL, default
// http://localhost:3000), -password ($RELAY_ADMIN_PASSWORD), -json,
// -timeout. Exit status: 0 done, 1 the relay refused or could not be
// reached, 2 bad usage.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

const (
	defaultAdminURL = "http://localhost:3000"
	// maxAdminResponse bounds what the CLI reads from the relay.
	maxAdminResponse = 256 << 20
)

const adminUsage = `usage: relay admin [flags] <command> [args]

commands:
  hosts [list] [-status S]       hosts with status, connection, accounts, cursor
  hosts block HOST               block a host and disconnect it
  hosts unblock HOST             unblock a host
  hosts limits HOST [-account-limit N] [-trusted=true|false]
  hosts reset-cursor HOST        forget a host's cursor and resubscribe it live
  takedown DID                   take an account down (its events are scrubbed)
  reverse DID                    reverse an account's takedown
  consumers                      firehose consumers with lag
  bans [list]                    banned domains
  bans add DOMAIN                ban a domain and every host under it
  bans remove DOMAIN             lift a domain ban

flags (before or after the command):
`

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

// adminCLI is one invocation.
type adminCLI struct {
	url, password string
	json          bool
	timeout       time.Duration
	status        string // hosts list filter
	accountLimit  int64
	trusted       string // "", "true" or "false"
	out, errOut   io.Writer
	client        *http.Client
}

// adminMain runs `relay admin args...` and returns the exit status.
func adminMain(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &adminCLI{out: stdout, errOut: stderr}
	fs := flag.NewFlagSet("relay admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, adminUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.url, "url", cmp.Or(getenv("RELAY_ADMIN_URL"), defaultAdminURL), "relay API base URL (RELAY_PORT) ($RELAY_ADMIN_URL)")
	fs.StringVar(&c.password, "password", getenv("RELAY_ADMIN_PASSWORD"), "admin password ($RELAY_ADMIN_PASSWORD)")
	fs.BoolVar(&c.json, "json", false, "print the relay's JSON instead of a table")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "request timeout")
	fs.StringVar(&c.status, "status", "", "hosts list: only hosts with this status")
	fs.Int64Var(&c.accountLimit, "account-limit", -1, "hosts limits: accounts allowed before new ones are throttled")
	fs.StringVar(&c.trusted, "trusted", "", "hosts limits: true or false (the trusted limits tier)")
	// Flags may come anywhere: parse, take one positional, parse again.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	c.client = &http.Client{Timeout: c.timeout}
	err := c.run(pos)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "relay admin:", strings.TrimPrefix(err.Error(), "usage: "))
		fmt.Fprintln(stderr, "run `relay admin -h` for the commands")
		return 2
	default:
		fmt.Fprintln(stderr, "relay admin:", err)
		return 1
	}
}

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// want checks the number of arguments after the command words.
func want(args []string, n int, what string) error {
	if len(args) != n {
		return usageErr("expected %s", what)
	}
	return nil
}

func (c *adminCLI) run(pos []string) error {
	if len(pos) == 0 {
		return usageErr("no command given")
	}
	switch cmd, args := pos[0], pos[1:]; cmd {
	case "hosts":
		sub := "list"
		if len(args) > 0 {
			sub, args = args[0], args[1:]
		}
		switch sub {
		case "list":
			if err := want(args, 0, "no arguments to hosts list"); err != nil {
				return err
			}
			return c.hostsList()
		case "block", "unblock":
			if err := want(args, 1, "a hostname: relay admin hosts "+sub+" HOST"); err != nil {
				return err
			}
			return c.post("/admin/hosts/"+sub, map[string]any{"hostname": args[0]}, func(m map[string]any) string {
				return fmt.Sprintf("%s: %v", m["hostname"], m["status"])
			})
		case "limits":
			if err := want(args, 1, "a hostname: relay admin hosts limits HOST -account-limit N and/or -trusted=BOOL"); err != nil {
				return err
			}
			body := map[string]any{"hostname": args[0]}
			if c.accountLimit >= 0 {
				body["accountLimit"] = c.accountLimit
			}
			if c.trusted != "" {
				b, err := strconv.ParseBool(c.trusted)
				if err != nil {
					return usageErr("-trusted must be true or false, not %q", c.trusted)
				}
				body["trusted"] = b
			}
			if len(body) == 1 {
				return usageErr("hosts limits needs -account-limit N or -trusted=BOOL")
			}
			return c.post("/admin/hosts/changeLimits", body, func(m map[string]any) string {
				return fmt.Sprintf("%s: account limit %v, trusted %v", m["hostname"], num(m["accountLimit"]), m["trusted"])
			})
		case "reset-cursor":
			if err := want(args, 1, "a hostname: relay admin hosts reset-cursor HOST"); err != nil {
				return err
			}
			return c.post("/admin/hosts/resetCursor", map[string]any{"hostname": args[0]}, func(m map[string]any) string {
				return fmt.Sprintf("%s: cursor reset to %v (resubscribed live)", m["hostname"], num(m["cursor"]))
			})
		default:
			return usageErr("unknown hosts command %q (list, block, unblock, limits, reset-cursor)", sub)
		}
	case "takedown", "reverse":
		if err := want(args, 1, "a DID: relay admin "+cmd+" DID"); err != nil {
			return err
		}
		path := "/admin/accounts/takedown"
		if cmd == "reverse" {
			path = "/admin/accounts/reverseTakedown"
		}
		return c.post(path, map[string]any{"did": args[0]}, func(m map[string]any) string {
			s := fmt.Sprintf("%s: %v", m["did"], m["status"])
			if seq := num(m["seq"]); seq != "0" {
				s += ", #account at seq " + seq
			} else {
				s += " (unchanged: it already was)"
			}
			if n := num(m["scrubbed"]); n != "0" {
				s += ", " + n + " logged events scrubbed"
			}
			return s
		})
	case "consumers":
		if err := want(args, 0, "no arguments to consumers"); err != nil {
			return err
		}
		return c.consumers()
	case "bans":
		sub := "list"
		if len(args) > 0 {
			sub, args = args[0], args[1:]
		}
		switch sub {
		case "list":
			if err := want(args, 0, "no arguments to bans list"); err != nil {
				return err
			}
			return c.bansList()
		case "add", "remove":
			if err := want(args, 1, "a domain: relay admin bans "+sub+" DOMAIN"); err != nil {
				return err
			}
			verb := map[string]string{"add": "banned", "remove": "unbanned"}[sub]
			return c.post("/admin/domainBans/"+sub, map[string]any{"domain": args[0]}, func(m map[string]any) string {
				return fmt.Sprintf("%s %v", verb, m["domain"])
			})
		default:
			return usageErr("unknown bans command %q (list, add, remove)", sub)
		}
	default:
		return usageErr("unknown command %q", cmd)
	}
}

// num prints a JSON number without a float's exponent.
func num(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// apiError is the relay's JSON error body.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// call does one request and returns the body of a 2xx answer; every
// other outcome is an error an operator can act on.
func (c *adminCLI) call(method, path string, body any) ([]byte, error) {
	base, err := url.Parse(c.url)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, usageErr("-url must be http(s)://host:port, not %q", c.url)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	target := strings.TrimSuffix(base.String(), "/") + path
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.password != "" {
		req.Header.Set("Authorization", "Bearer "+c.password)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the relay at %s: %s (is it running? set -url or RELAY_ADMIN_URL)", base.Redacted(), netReason(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse+1))
	if err != nil {
		return nil, fmt.Errorf("reading the relay's answer from %s: %s", target, netReason(err))
	}
	if len(data) > maxAdminResponse {
		return nil, fmt.Errorf("the relay's answer from %s is larger than %d MiB", target, maxAdminResponse>>20)
	}
	var ae apiError
	isErr := json.Unmarshal(data, &ae) == nil && ae.Error != ""
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		if c.password == "" {
			return nil, errors.New("the relay wants the admin password: set -password or RELAY_ADMIN_PASSWORD")
		}
		return nil, errors.New("wrong admin password (the relay answered 401): check -password or RELAY_ADMIN_PASSWORD")
	case resp.StatusCode == http.StatusForbidden && isErr && ae.Error == "Forbidden":
		return nil, errors.New("the relay's admin API is disabled: start the relay with RELAY_ADMIN_PASSWORD set")
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		if !json.Valid(data) {
			return nil, fmt.Errorf("%s answered HTTP %d with something that is not JSON: is -url the relay's API port (RELAY_PORT)?", target, resp.StatusCode)
		}
		return data, nil
	case isErr:
		return nil, fmt.Errorf("the relay refused (HTTP %d %s): %s", resp.StatusCode, ae.Error, ae.Message)
	default:
		return nil, fmt.Errorf("%s answered HTTP %d (%s): is -url the relay's API port (RELAY_PORT)?", target, resp.StatusCode, snippet(data))
	}
}

// netReason shortens a transport error to its cause.
func netReason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return "no answer within the timeout"
		}
		return ue.Err.Error()
	}
	return err.Error()
}

func snippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	if s == "" {
		s = "empty body"
	}
	return s
}

// printJSON writes the relay's JSON, indented.
func (c *adminCLI) printJSON(data []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, data, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := c.out.Write(buf.Bytes())
	return err
}

func (c *adminCLI) post(path string, body map[string]any, human func(map[string]any) string) error {
	data, err := c.call(http.MethodPost, path, body)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(data)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("unexpected answer from the relay: %s", snippet(data))
	}
	_, err = fmt.Fprintln(c.out, human(m))
	return err
}

func (c *adminCLI) table(header string, rows [][]string, footer string) error {
	tw := tabwriter.NewWriter(c.out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(c.out, footer)
	return err
}

// adminHost mirrors relay.AdminHost (the CLI reads JSON, not Go types).
type adminHost struct {
	Hostname     string           `json:"hostname"`
	Status       string           `json:"status"`
	Trusted      bool             `json:"trusted"`
	Cursor       int64            `json:"cursor"`
	Failures     int              `json:"failures"`
	AccountCount int64            `json:"accountCount"`
	AccountLimit int64            `json:"accountLimit"`
	Connected    bool             `json:"connected"`
	Received     int64            `json:"received"`
	Drops        map[string]int64 `json:"drops"`
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *adminCLI) hostsList() error {
	data, err := c.call(http.MethodGet, "/admin/hosts", nil)
	if err != nil {
		return err
	}
	var res struct {
		Hosts []adminHost `json:"hosts"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("unexpected answer from the relay: %s", snippet(data))
	}
	hosts := res.Hosts
	if c.status != "" {
		hosts = slices.DeleteFunc(hosts, func(h adminHost) bool { return h.Status != c.status })
	}
	if c.json {
		b, _ := json.Marshal(map[string]any{"hosts": hosts})
		return c.printJSON(b)
	}
	if len(hosts) == 0 {
		_, err := fmt.Fprintln(c.out, "no hosts"+filterNote(c.status))
		return err
	}
	rows := make([][]string, 0, len(hosts))
	byStatus := map[string]int{}
	for _, h := range hosts {
		byStatus[h.Status]++
		var drops int64
		for _, n := range h.Drops {
			drops += n
		}
		rows = append(rows, []string{
			h.Hostname, h.Status, yesNo(h.Connected), strconv.FormatInt(h.AccountCount, 10), strconv.FormatInt(h.AccountLimit, 10),
			yesNo(h.Trusted), strconv.Itoa(h.Failures), strconv.FormatInt(h.Cursor, 10), strconv.FormatInt(h.Received, 10), strconv.FormatInt(drops, 10),
		})
	}
	statuses := make([]string, 0, len(byStatus))
	for s, n := range byStatus {
		statuses = append(statuses, fmt.Sprintf("%d %s", n, s))
	}
	slices.Sort(statuses)
	return c.table("HOSTNAME\tSTATUS\tCONNECTED\tACCOUNTS\tLIMIT\tTRUSTED\tFAILURES\tCURSOR\tRECEIVED\tDROPS", rows,
		fmt.Sprintf("%d hosts%s: %s", len(hosts), filterNote(c.status), strings.Join(statuses, ", ")))
}

func filterNote(status string) string {
	if status == "" {
		return ""
	}
	return " with status " + status
}

type adminConsumer struct {
	ID             uint64    `json:"id"`
	RemoteAddr     string    `json:"remoteAddr"`
	UserAgent      string    `json:"userAgent"`
	Cursor         int64     `json:"cursor"`
	Position       int64     `json:"position"`
	Lag            int64     `json:"lag"`
	EventsSent     int64     `json:"eventsSent"`
	QueuedBytes    int64     `json:"queuedBytes"`
	ConnectedSince time.Time `json:"connectedSince"`
}

func (c *adminCLI) consumers() error {
	data, err := c.call(http.MethodGet, "/admin/consumers", nil)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(data)
	}
	var res struct {
		Consumers []adminConsumer `json:"consumers"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("unexpected answer from the relay: %s", snippet(data))
	}
	if len(res.Consumers) == 0 {
		_, err := fmt.Fprintln(c.out, "no consumers connected")
		return err
	}
	rows := make([][]string, 0, len(res.Consumers))
	var maxLag int64
	for _, x := range res.Consumers {
		maxLag = max(maxLag, x.Lag)
		cursor := "live"
		if x.Cursor >= 0 {
			cursor = strconv.FormatInt(x.Cursor, 10)
		}
		ua := cmp.Or(x.UserAgent, "-")
		if len(ua) > 40 {
			ua = ua[:40] + "…"
		}
		rows = append(rows, []string{
			strconv.FormatUint(x.ID, 10), x.RemoteAddr, ua, cursor, strconv.FormatInt(x.Position, 10), strconv.FormatInt(x.Lag, 10),
			strconv.FormatInt(x.EventsSent, 10), strconv.FormatInt(x.QueuedBytes, 10), time.Since(x.ConnectedSince).Round(time.Second).String(),
		})
	}
	return c.table("ID\tREMOTE\tUSER-AGENT\tCURSOR\tPOSITION\tLAG\tSENT\tQUEUED-BYTES\tCONNECTED", rows,
		fmt.Sprintf("%d consumers, max lag %d events", len(res.Consumers), maxLag))
}

func (c *adminCLI) bansList() error {
	data, err := c.call(http.MethodGet, "/admin/domainBans", nil)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(data)
	}
	var res struct {
		Domains []string `json:"domains"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("unexpected answer from the relay: %s", snippet(data))
	}
	if len(res.Domains) == 0 {
		_, err := fmt.Fprintln(c.out, "no banned domains")
		return err
	}
	rows := make([][]string, len(res.Domains))
	for i, d := range res.Domains {
		rows[i] = []string{d}
	}
	return c.table("DOMAIN", rows, fmt.Sprintf("%d banned domains", len(res.Domains)))
}

package meta

import (
	"errors"
	"testing"
	"time"
)

func TestIsActive(t *testing.T) {
	for _, tc := range []struct {
		local, upstream AccountStatus
		want            bool
	}{
		{AccountActive, AccountActive, true},
		{AccountThrottled, AccountActive, false}, // past its host's account limit: not relayed (issue: host lifecycle)
		{AccountTakendown, AccountActive, false},
		{AccountSuspended, AccountActive, false},
		{AccountActive, AccountDeactivated, false},
		{AccountActive, AccountDeleted, false},
		{AccountThrottled, AccountTakendown, false},
	} {
		a := Account{Status: tc.local, UpstreamStatus: tc.upstream}
		if got := a.IsActive(); got != tc.want {
			t.Errorf("IsActive(%s/%s) = %v, want %v", tc.local, tc.upstream, got, tc.want)
		}
	}
}

func TestStoredTime(t *testing.T) {
	in := time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.FixedZone("x", -7*3600))
	got := StoredTime(in)
	if got.Location() != time.UTC || got.Nanosecond() != 123456000 || !got.Equal(in.Truncate(time.Microsecond)) {
		t.Fatalf("StoredTime(%v) = %v", in, got)
	}
	before := time.Now().Add(-time.Second)
	if now := StoredTime(time.Time{}); now.Before(before) || now.Location() != time.UTC {
		t.Fatalf("StoredTime(zero) = %v, want now in UTC", now)
	}
}

func TestNormalizeAndLimits(t *testing.T) {
	if got := NormalizeHostname("PDS.Example.COM:2583"); got != "pds.example.com:2583" {
		t.Fatalf("NormalizeHostname = %q", got)
	}
	for _, n := range []int{0, -5, MaxListLimit + 1} {
		if !errors.Is(CheckLimit(n), ErrBadLimit) {
			t.Errorf("CheckLimit(%d) accepted", n)
		}
	}
	for _, n := range []int{1, MaxListLimit} {
		if err := CheckLimit(n); err != nil {
			t.Errorf("CheckLimit(%d) = %v", n, err)
		}
	}
	if DefaultHostStatus("") != HostActive || DefaultHostStatus(HostBanned) != HostBanned ||
		DefaultAccountStatus("") != AccountActive || DefaultAccountStatus(AccountDeleted) != AccountDeleted {
		t.Fatal("status defaults wrong")
	}
}

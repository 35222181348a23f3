package perf

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/atproto/atcrypto"
	"github.com/bluesky-social/indigo/atproto/repo"
	"github.com/bluesky-social/indigo/atproto/repo/mst"
	"github.com/bluesky-social/indigo/atproto/syntax"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	"github.com/ipfs/go-cid"
)

// KeyType selects an account's signing curve.
type KeyType int

const (
	// K256 is secp256k1, the key type of most accounts on the network.
	K256 KeyType = iota
	// P256 is NIST P-256, the other curve atproto allows.
	P256
)

func (k KeyType) String() string {
	if k == P256 {
		return "P-256"
	}
	return "K-256"
}

// Limits of a relay that the synthetic commits are built around.
const (
	// MaxCommitOps is the largest op count a relay accepts in one #commit.
	MaxCommitOps = 200
	// MaxBlocksBytes is the largest "blocks" a relay accepts in one event.
	MaxBlocksBytes = 2_000_000
	// FutureRevTolerance is how far in the future a relay accepts a rev.
	FutureRevTolerance = 5 * time.Minute
)

// Account shape limits.
const (
	// maxLiveRecords is the number of live records above which an account
	// deletes more than it creates, so long runs keep each MST (and the
	// memory of a large network) bounded.
	maxLiveRecords = 2_000
	// deleteChance is the per-op probability of a delete while the account
	// is under maxLiveRecords; above it, deleteChanceFull applies.
	deleteChance     = 0.08
	deleteChanceFull = 0.6
)

var (
	// ErrNoCommit is returned by Sync and by fault builders that need a
	// previous commit when the account has not committed yet.
	ErrNoCommit = errors.New("perf: account has no commit yet")
	// ErrOpCount is returned by Commit for an op count below 1.
	ErrOpCount = errors.New("perf: a commit needs at least one op")
)

// Account is a repository with a real signing key. Its methods are safe for
// concurrent use; commits of one account are built one at a time, in order.
type Account struct {
	DID    string
	Handle string

	mu      sync.Mutex
	keyType KeyType
	key     atcrypto.PrivateKey
	pds     *PDS
	clock   *syntax.TIDClock
	rng     *rand.Rand
	tree    mst.Tree
	rev     string   // rev of the last commit, "" before the first
	data    *cid.Cid // MST root of the last commit: the next prevData
	head    cid.Cid  // CID of the last signed commit block
	headBlk []byte   // the last signed commit block, for #sync
	records []recordRef
	profile *cid.Cid // CID of the profile record, nil until created
}

// NewAccount creates a key of type kt, a did:plc-looking DID, registers the
// DID in plc with pds.URL() as its PDS endpoint, and starts an empty repo.
// plc may be nil (benchmarks); pds may be nil, then the endpoint is empty.
func NewAccount(kt KeyType, handle string, plc *PLC, pds *PDS) (*Account, error) {
	key, err := newKey(kt)
	if err != nil {
		return nil, err
	}
	var seed [16]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	a := &Account{
		DID:     randomDIDPLC(rng),
		Handle:  handle,
		keyType: kt,
		key:     key,
		pds:     pds,
		clock:   syntax.NewTIDClock(uint(rng.IntN(1024))),
		rng:     rng,
		tree:    mst.NewEmptyTree(),
	}
	if plc != nil {
		if err := a.register(plc); err != nil {
			return nil, err
		}
	}
	if pds != nil {
		pds.addRepo(a)
	}
	return a, nil
}

func newKey(kt KeyType) (atcrypto.PrivateKey, error) {
	if kt == P256 {
		return atcrypto.GeneratePrivateKeyP256()
	}
	return atcrypto.GeneratePrivateKeyK256()
}

// register puts the account's current key, handle and PDS in plc. Caller
// holds a.mu or owns a exclusively.
func (a *Account) register(plc *PLC) error {
	pub, err := a.key.PublicKey()
	if err != nil {
		return err
	}
	endpoint := ""
	if a.pds != nil {
		endpoint = a.pds.URL()
	}
	plc.Put(a.DID, a.Handle, pub, endpoint)
	return nil
}

// KeyType is the curve of the account's signing key.
func (a *Account) KeyType() KeyType { return a.keyType }

// PublicKey is the account's current signing key.
func (a *Account) PublicKey() atcrypto.PublicKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	pub, _ := a.key.PublicKey()
	return pub
}

// PDS is the host the account currently lives on.
func (a *Account) PDS() *PDS {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pds
}

// Rev is the rev of the last commit, "" before the first.
func (a *Account) Rev() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rev
}

// Data is the MST root CID of the last commit, nil before the first.
func (a *Account) Data() *cid.Cid {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.data
}

// Records is the number of live records in the repo.
func (a *Account) Records() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.records)
}

// Commit builds a signed sync-1.1 #commit of nOps realistic ops (posts,
// likes, follows, reposts, a profile update, deletes of earlier records)
// and advances the account to it. Blocks is the CAR diff: the commit block,
// the MST nodes that changed or are needed to invert the ops, and the new
// records. PrevData is the previous commit's data CID (nil for the first),
// Since the previous rev, Rev the next TID of the account's clock.
func (a *Account) Commit(nOps int) (*comatproto.SyncSubscribeRepos_Commit, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.build(commitSpec{ops: nOps, persist: true})
}

// commitSpec describes one commit to build; the zero values mean "as a
// well-behaved PDS would".
type commitSpec struct {
	ops      int
	persist  bool                // advance the account's state
	rev      string              // override the rev (faults)
	signer   atcrypto.PrivateKey // override the signing key (faults)
	postText int                 // create only posts of this text size (oversized)
	prevData *cid.Cid            // override prevData (faults)
}

// build makes one commit. Without persist it works on a copy of the tree
// and leaves the account unchanged, for fault events a relay must drop.
// Caller holds a.mu.
func (a *Account) build(spec commitSpec) (*comatproto.SyncSubscribeRepos_Commit, error) {
	if spec.ops < 1 {
		return nil, ErrOpCount
	}
	tree := &a.tree
	if !spec.persist {
		cp := a.tree.Copy()
		tree = &cp
	}
	now := nowDatetime()
	ops := make([]*comatproto.SyncSubscribeRepos_RepoOp, 0, spec.ops)
	var recBlocks []carBlock
	var created []recordRef
	deleted := make(map[int]struct{})
	profile := a.profile
	profileTouched := false

	for len(ops) < spec.ops {
		// Delete an earlier record.
		dc := deleteChance
		if len(a.records) > maxLiveRecords {
			dc = deleteChanceFull
		}
		// A delete never empties the repo: indigo's mst keeps an emptied
		// root at its old height, so a key inserted next (by the account,
		// or by a relay inverting the commit) lands in a non-canonical tree
		// and the commit fails inversion. Real repos are rarely emptied.
		if spec.postText == 0 && len(a.records) > len(deleted)+1 && a.rng.Float64() < dc {
			i := a.rng.IntN(len(a.records))
			if _, dup := deleted[i]; dup {
				continue
			}
			deleted[i] = struct{}{}
			r := a.records[i]
			op, err := repo.ApplyOp(tree, r.path, nil)
			if err != nil {
				return nil, fmt.Errorf("perf: delete %s: %w", r.path, err)
			}
			ops = append(ops, &comatproto.SyncSubscribeRepos_RepoOp{
				Action: "delete",
				Path:   r.path,
				Prev:   (*lexutil.LexLink)(op.Prev),
			})
			continue
		}

		kind, coll, textLen := a.pickKind(spec.postText, profileTouched)
		rkey := "self"
		if kind != kindProfile {
			rkey = a.clock.Next().String()
		}
		var subject *comatproto.RepoStrongRef
		if kind == kindLike || kind == kindRepost {
			subject = a.subject()
		}
		data, err := encodeRecord(a.rng, kind, now, subject, randomDIDPLC(a.rng), textLen)
		if err != nil {
			return nil, err
		}
		c, err := cborCIDPrefix.Sum(data)
		if err != nil {
			return nil, err
		}
		path := coll + "/" + rkey
		op, err := repo.ApplyOp(tree, path, &c)
		if err != nil {
			return nil, fmt.Errorf("perf: write %s: %w", path, err)
		}
		rop := &comatproto.SyncSubscribeRepos_RepoOp{
			Action: "create",
			Path:   path,
			Cid:    (*lexutil.LexLink)(&c),
		}
		if op.Prev != nil {
			rop.Action = "update"
			rop.Prev = (*lexutil.LexLink)(op.Prev)
		}
		ops = append(ops, rop)
		recBlocks = append(recBlocks, carBlock{cid: c, data: data})
		if kind == kindProfile {
			profileTouched = true
			profile = &c
		} else {
			created = append(created, recordRef{path: path, cid: c})
		}
	}

	diff := newDiffBlocks()
	root, err := tree.WriteDiffBlocks(context.Background(), diff)
	if err != nil {
		return nil, err
	}

	rev := spec.rev
	if rev == "" {
		rev = a.clock.Next().String()
	}
	commit := repo.Commit{
		DID:     a.DID,
		Version: repo.ATPROTO_REPO_VERSION,
		Data:    *root,
		Rev:     rev,
	}
	signer := spec.signer
	if signer == nil {
		signer = a.key
	}
	if err := commit.Sign(signer); err != nil {
		return nil, err
	}
	var cb bytes.Buffer
	if err := commit.MarshalCBOR(&cb); err != nil {
		return nil, err
	}
	commitBlk := cb.Bytes()
	commitCID, err := cborCIDPrefix.Sum(commitBlk)
	if err != nil {
		return nil, err
	}

	blks := make([]carBlock, 0, 1+len(diff.list)+len(recBlocks))
	blks = append(blks, carBlock{cid: commitCID, data: commitBlk})
	for _, b := range diff.list {
		blks = append(blks, carBlock{cid: b.Cid(), data: b.RawData()})
	}
	seen := make(map[cid.Cid]struct{}, len(recBlocks))
	for _, b := range recBlocks {
		if _, dup := seen[b.cid]; dup {
			continue
		}
		seen[b.cid] = struct{}{}
		blks = append(blks, b)
	}
	car, err := writeCAR(commitCID, blks)
	if err != nil {
		return nil, err
	}

	msg := &comatproto.SyncSubscribeRepos_Commit{
		Repo:   a.DID,
		Rev:    rev,
		Commit: lexutil.LexLink(commitCID),
		Blocks: car,
		Ops:    ops,
		Blobs:  []lexutil.LexLink{},
		Time:   now,
	}
	if a.rev != "" {
		since := a.rev
		msg.Since = &since
	}
	prev := a.data
	if spec.prevData != nil {
		prev = spec.prevData
	}
	if prev != nil {
		msg.PrevData = (*lexutil.LexLink)(prev)
	}

	if spec.persist {
		a.rev = rev
		a.data = root
		a.head = commitCID
		a.headBlk = commitBlk
		a.profile = profile
		a.removeRecords(deleted)
		a.records = append(a.records, created...)
	}
	return msg, nil
}

// pickKind chooses the kind of a created record. A fixed postText forces
// posts of that size; the profile is written at most once per commit.
func (a *Account) pickKind(postText int, profileTouched bool) (recordKind, string, int) {
	if postText > 0 {
		return kindPost, collPost, postText
	}
	textLen := minPostText + a.rng.IntN(maxPostText-minPostText+1)
	x := a.rng.IntN(100)
	switch {
	case x < 35:
		return kindPost, collPost, textLen
	case x < 70:
		return kindLike, collLike, 0
	case x < 85:
		return kindFollow, collFollow, 0
	case x < 97 || profileTouched:
		return kindRepost, collRepost, 0
	default:
		return kindProfile, collProfile, 0
	}
}

// subject returns a strong ref to one of the account's posts, or to a
// made-up post of another account when it has none.
func (a *Account) subject() *comatproto.RepoStrongRef {
	for range 4 {
		if len(a.records) == 0 {
			break
		}
		r := a.records[a.rng.IntN(len(a.records))]
		if len(r.path) > len(collPost) && r.path[:len(collPost)] == collPost {
			return &comatproto.RepoStrongRef{Uri: "at://" + a.DID + "/" + r.path, Cid: r.cid.String()}
		}
	}
	return &comatproto.RepoStrongRef{
		Uri: "at://" + randomDIDPLC(a.rng) + "/" + collPost + "/" + a.clock.Next().String(),
		Cid: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
	}
}

// removeRecords drops the records at the given indexes (swap-remove from
// the highest index down, so lower indexes stay valid).
func (a *Account) removeRecords(idx map[int]struct{}) {
	if len(idx) == 0 {
		return
	}
	for i := len(a.records) - 1; i >= 0; i-- {
		if _, ok := idx[i]; !ok {
			continue
		}
		last := len(a.records) - 1
		a.records[i] = a.records[last]
		a.records = a.records[:last]
	}
}

// Sync builds a #sync event for the current head: blocks is a CAR whose
// only block is the last signed commit.
func (a *Account) Sync() (*comatproto.SyncSubscribeRepos_Sync, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rev == "" {
		return nil, ErrNoCommit
	}
	car, err := writeCAR(a.head, []carBlock{{cid: a.head, data: a.headBlk}})
	if err != nil {
		return nil, err
	}
	return &comatproto.SyncSubscribeRepos_Sync{
		Did:    a.DID,
		Rev:    a.rev,
		Blocks: car,
		Time:   nowDatetime(),
	}, nil
}

// Identity builds an #identity event announcing the account's handle.
func (a *Account) Identity() *comatproto.SyncSubscribeRepos_Identity {
	h := a.Handle
	return &comatproto.SyncSubscribeRepos_Identity{Did: a.DID, Handle: &h, Time: nowDatetime()}
}

// AccountEvent builds an #account event; status is omitted when empty
// (the lexicon leaves it unset for active accounts).
func (a *Account) AccountEvent(active bool, status string) *comatproto.SyncSubscribeRepos_Account {
	ev := &comatproto.SyncSubscribeRepos_Account{Did: a.DID, Active: active, Time: nowDatetime()}
	if status != "" {
		s := status
		ev.Status = &s
	}
	return ev
}

// RotateKey replaces the signing key with a new one of the same type and
// registers it in plc; the following commits are signed with it.
func (a *Account) RotateKey(plc *PLC) error {
	key, err := newKey(a.keyType)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.key = key
	return a.register(plc)
}

// MoveTo migrates the account: plc now names pds as its PDS, and the
// account's events belong on pds from now on.
func (a *Account) MoveTo(plc *PLC, pds *PDS) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pds = pds
	pds.addRepo(a)
	// register only fails when the key cannot produce a public key, which
	// a key made by newKey always can.
	_ = a.register(plc)
}

package perf

import (
	"bytes"
	"math/rand/v2"
	"strings"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/api/bsky"
	"github.com/bluesky-social/indigo/atproto/syntax"
	"github.com/ipfs/go-cid"
)

// Collections written by synthetic accounts.
const (
	collPost    = "app.bsky.feed.post"
	collLike    = "app.bsky.feed.like"
	collRepost  = "app.bsky.feed.repost"
	collFollow  = "app.bsky.graph.follow"
	collProfile = "app.bsky.actor.profile"
)

// Post text length bounds, in bytes: real posts cluster in this range.
const (
	minPostText = 100
	maxPostText = 300
)

// postWords is the vocabulary of generated post text.
var postWords = strings.Fields(`the a relay firehose commit repo account network
post like follow repost today people should would could about after again
sky blue cloud open protocol decentralized data server host key signature
tree merkle search block event stream cursor replay latency throughput
morning evening coffee music books garden weather friends photo walk city`)

// recordKind is the kind of a created record.
type recordKind int

const (
	kindPost recordKind = iota
	kindLike
	kindRepost
	kindFollow
	kindProfile
)

// recordRef is a live record of an account: its repo path and CID.
type recordRef struct {
	path string
	cid  cid.Cid
}

// postText returns text of n bytes or slightly more, made of words.
func postText(rng *rand.Rand, n int) string {
	var b strings.Builder
	b.Grow(n + 16)
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(postWords[rng.IntN(len(postWords))])
	}
	return b.String()
}

// encodeRecord builds a record of kind k with indigo's lexicon types and
// returns its DAG-CBOR bytes. subject is the strong ref for likes and
// reposts; follow names a DID; textLen is the post text length.
func encodeRecord(rng *rand.Rand, k recordKind, now string, subject *comatproto.RepoStrongRef, follow string, textLen int) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch k {
	case kindPost:
		rec := bsky.FeedPost{
			LexiconTypeID: collPost,
			CreatedAt:     now,
			Langs:         []string{"en"},
			Text:          postText(rng, textLen),
		}
		err = rec.MarshalCBOR(&buf)
	case kindLike:
		rec := bsky.FeedLike{LexiconTypeID: collLike, CreatedAt: now, Subject: subject}
		err = rec.MarshalCBOR(&buf)
	case kindRepost:
		rec := bsky.FeedRepost{LexiconTypeID: collRepost, CreatedAt: now, Subject: subject}
		err = rec.MarshalCBOR(&buf)
	case kindFollow:
		rec := bsky.GraphFollow{LexiconTypeID: collFollow, CreatedAt: now, Subject: follow}
		err = rec.MarshalCBOR(&buf)
	default:
		name := postText(rng, 12)
		desc := postText(rng, 80)
		rec := bsky.ActorProfile{LexiconTypeID: collProfile, CreatedAt: &now, DisplayName: &name, Description: &desc}
		err = rec.MarshalCBOR(&buf)
	}
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// randomDIDPLC returns a did:plc-looking identifier: "did:plc:" and 24
// lowercase base32 characters, as real did:plc values look.
func randomDIDPLC(rng *rand.Rand) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	var b [8 + 24]byte
	copy(b[:], "did:plc:")
	for i := 8; i < len(b); i++ {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b[:])
}

// nowDatetime is the current time in the atproto datetime format.
func nowDatetime() string { return syntax.DatetimeNow().String() }

package perf

import (
	"bytes"
	"context"
	"errors"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipld/go-car"
	carutil "github.com/ipld/go-car/util"
	"github.com/multiformats/go-multihash"
)

// cborCIDPrefix is the CID prefix of every repo block: CIDv1, dag-cbor, sha-256.
var cborCIDPrefix = cid.NewPrefixV1(cid.DagCBOR, multihash.SHA2_256)

// errBlockstoreOp is returned by the diff collector for operations the MST
// never uses on the store it writes to.
var errBlockstoreOp = errors.New("perf: operation not supported by the diff block collector")

// diffBlocks collects, in write order, the blocks indigo's MST writes in
// Tree.WriteDiffBlocks: the changed nodes plus the nodes it marked as needed
// to invert the operations. It implements the subset of
// blockstore.Blockstore that WriteDiffBlocks uses; a map dedupes repeats.
type diffBlocks struct {
	list []blocks.Block
	seen map[cid.Cid]struct{}
}

func newDiffBlocks() *diffBlocks {
	return &diffBlocks{seen: make(map[cid.Cid]struct{})}
}

func (d *diffBlocks) add(b blocks.Block) {
	if _, ok := d.seen[b.Cid()]; ok {
		return
	}
	d.seen[b.Cid()] = struct{}{}
	d.list = append(d.list, b)
}

func (d *diffBlocks) Put(_ context.Context, b blocks.Block) error {
	d.add(b)
	return nil
}

func (d *diffBlocks) PutMany(_ context.Context, bs []blocks.Block) error {
	for _, b := range bs {
		d.add(b)
	}
	return nil
}

func (d *diffBlocks) Has(_ context.Context, c cid.Cid) (bool, error) {
	_, ok := d.seen[c]
	return ok, nil
}

func (d *diffBlocks) Get(_ context.Context, c cid.Cid) (blocks.Block, error) {
	for _, b := range d.list {
		if b.Cid() == c {
			return b, nil
		}
	}
	return nil, &ipld.ErrNotFound{Cid: c}
}

func (d *diffBlocks) GetSize(ctx context.Context, c cid.Cid) (int, error) {
	b, err := d.Get(ctx, c)
	if err != nil {
		return 0, err
	}
	return len(b.RawData()), nil
}

func (d *diffBlocks) DeleteBlock(context.Context, cid.Cid) error { return errBlockstoreOp }

func (d *diffBlocks) AllKeysChan(context.Context) (<-chan cid.Cid, error) {
	return nil, errBlockstoreOp
}

func (d *diffBlocks) HashOnRead(bool) {}

// carBlock is one block of a CAR file: CID and raw bytes.
type carBlock struct {
	cid  cid.Cid
	data []byte
}

// writeCAR encodes a CARv1 with root as its only root and the given blocks in
// order, the layout of a firehose commit's "blocks" field.
func writeCAR(root cid.Cid, bs []carBlock) ([]byte, error) {
	size := 64
	for _, b := range bs {
		size += len(b.data) + 48
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	if err := car.WriteHeader(&car.CarHeader{Roots: []cid.Cid{root}, Version: 1}, buf); err != nil {
		return nil, err
	}
	for _, b := range bs {
		if err := carutil.LdWrite(buf, b.cid.Bytes(), b.data); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

package perf

import (
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"time"
)

// ErrProfileFormat is returned for a CPU profile that is not a gzipped
// pprof protobuf with a cpu/nanoseconds sample value.
var ErrProfileFormat = errors.New("perf: not a pprof CPU profile")

// maxProfileBytes bounds the decompressed profile CPUByLabel reads.
const maxProfileBytes = 512 << 20

// Field numbers of the pprof profile.proto messages read here.
const (
	pbProfileSampleType  = 1
	pbProfileSample      = 2
	pbProfileStringTable = 6
	pbValueTypeType      = 1
	pbSampleValue        = 2
	pbSampleLabel        = 3
	pbLabelKey           = 1
	pbLabelStr           = 2
)

// CPUByLabel reads a runtime/pprof CPU profile and sums its CPU time by
// the value of one pprof label ("" for samples without it). Together with
// GoroutinesByLabel it splits a process between components started under
// different labels, e.g. an in-process relay and the load generator.
func CPUByLabel(r io.Reader, key string) (map[string]time.Duration, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, errors.Join(ErrProfileFormat, err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, maxProfileBytes))
	if err != nil {
		return nil, errors.Join(ErrProfileFormat, err)
	}
	type label struct{ key, str int64 }
	type sample struct {
		values []int64
		labels []label
	}
	var (
		strs        []string
		sampleTypes []int64 // string index of each value's type
		samples     []sample
	)
	err = pbFields(b, func(field int, wire int, v uint64, sub []byte) error {
		switch field {
		case pbProfileStringTable:
			strs = append(strs, string(sub))
		case pbProfileSampleType:
			return pbFields(sub, func(f, _ int, v uint64, _ []byte) error {
				if f == pbValueTypeType {
					sampleTypes = append(sampleTypes, int64(v))
				}
				return nil
			})
		case pbProfileSample:
			var s sample
			err := pbFields(sub, func(f, w int, v uint64, sub []byte) error {
				switch {
				case f == pbSampleValue && w == pbWireVarint:
					s.values = append(s.values, int64(v))
				case f == pbSampleValue && w == pbWireBytes:
					return pbPacked(sub, func(v uint64) { s.values = append(s.values, int64(v)) })
				case f == pbSampleLabel:
					var l label
					err := pbFields(sub, func(f, _ int, v uint64, _ []byte) error {
						switch f {
						case pbLabelKey:
							l.key = int64(v)
						case pbLabelStr:
							l.str = int64(v)
						}
						return nil
					})
					s.labels = append(s.labels, l)
					return err
				}
				return nil
			})
			samples = append(samples, s)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	cpu := -1
	for i, t := range sampleTypes {
		if t >= 0 && int(t) < len(strs) && strs[t] == "cpu" {
			cpu = i
		}
	}
	if cpu < 0 {
		return nil, ErrProfileFormat
	}
	out := map[string]time.Duration{}
	for _, s := range samples {
		if cpu >= len(s.values) {
			continue
		}
		value := ""
		for _, l := range s.labels {
			if int(l.key) < len(strs) && strs[l.key] == key && int(l.str) < len(strs) {
				value = strs[l.str]
			}
		}
		out[value] += time.Duration(s.values[cpu])
	}
	return out, nil
}

// Protobuf wire types used by the profile.
const (
	pbWireVarint = 0
	pbWire64     = 1
	pbWireBytes  = 2
	pbWire32     = 5
)

// pbFields calls fn for each field of a protobuf message: varints with v,
// length-delimited fields with sub; fixed-width fields are skipped.
func pbFields(b []byte, fn func(field, wire int, v uint64, sub []byte) error) error {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return ErrProfileFormat
		}
		b = b[n:]
		field, wire := int(tag>>3), int(tag&7)
		var v uint64
		var sub []byte
		switch wire {
		case pbWireVarint:
			if v, n = binary.Uvarint(b); n <= 0 {
				return ErrProfileFormat
			}
			b = b[n:]
		case pbWireBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return ErrProfileFormat
			}
			sub, b = b[n:n+int(l)], b[n+int(l):]
		case pbWire64:
			if len(b) < 8 {
				return ErrProfileFormat
			}
			b = b[8:]
			continue
		case pbWire32:
			if len(b) < 4 {
				return ErrProfileFormat
			}
			b = b[4:]
			continue
		default:
			return ErrProfileFormat
		}
		if err := fn(field, wire, v, sub); err != nil {
			return err
		}
	}
	return nil
}

// pbPacked calls fn for each varint of a packed repeated field.
func pbPacked(b []byte, fn func(uint64)) error {
	for len(b) > 0 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return ErrProfileFormat
		}
		fn(v)
		b = b[n:]
	}
	return nil
}

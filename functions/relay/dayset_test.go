package relay

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The day set finds every record it holds and nothing else, whatever its size and however its
// keys fall: payment ids as payrelay makes them (evenly spread), and keys crowded under one top
// bit pattern (the directory's runs then hold them all, and the search within the run still
// finds each).
func TestDaySetFindsEveryRecordItHolds(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		n    int
		key  func(i int) (hi, lo uint64)
	}{
		{"empty", 0, nil},
		{"one", 1, nil},
		{"four", 4, nil},
		{"five", 5, nil},
		{"a day", 50_000, nil},
		{"crowded", 5_000, func(i int) (uint64, uint64) { return 0xABCD<<48 | uint64(rng.Uint32()), uint64(i) }},
		{"at the ends", 3_000, func(i int) (uint64, uint64) {
			if i%2 == 0 {
				return uint64(i), 0
			}
			return ^uint64(0) - uint64(i), 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if key == nil {
				key = func(i int) (uint64, uint64) {
					return paymentWords(EnvProduction, "alipay", "m1", fmt.Sprint("order-", i))
				}
			}
			set := &daySet{}
			type k struct {
				hi, lo uint64
				sub    uint32
			}
			var held []k
			for i := range tc.n {
				hi, lo := key(i)
				var sub uint32
				if i%3 == 1 {
					sub = refundHash(fmt.Sprint("refund-", i))
				}
				set.recs = append(set.recs, dayRecord{hi: hi, lo: lo, sub: sub, amount: int64(i)})
				held = append(held, k{hi, lo, sub})
			}
			set.seal()
			if len(set.recs) != tc.n {
				t.Fatalf("%d records after sealing, want %d", len(set.recs), tc.n)
			}
			for i, h := range held {
				r := set.findWords(h.hi, h.lo, h.sub)
				if r == nil || r.amount != int64(i) {
					t.Fatalf("record %d (%x %x %d): found %+v", i, h.hi, h.lo, h.sub, r)
				}
				if h.sub == 0 && set.findWords(h.hi, h.lo, 7) != nil {
					t.Fatalf("record %d: a refund it never had was found", i)
				}
				if set.findWords(h.hi, h.lo+1<<40, h.sub) != nil || set.findWords(h.hi^1<<63, h.lo, h.sub) != nil {
					t.Fatalf("record %d: a neighbouring key was found", i)
				}
			}
		})
	}
}

package relay

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"slices"
	"unsafe"
)

// daySet is what a reconciliation holds of the stored day: one fixed-size record (dayRecord,
// 32 bytes) per payment paid that day and per refund made that day, sorted by key, never the
// documents, and a directory of where each run of records sharing the key's top bits starts
// (one uint32 per four records at most: under 2 bytes a record). A row of the bill is looked
// up in it by its payment id and refund: the directory narrows it to a handful of records (the
// ids are hashes, spread evenly), where a binary search over the whole day cost a cache miss a
// step, a fifth of the row's time at 200,000 records. What the set lacks is read from the store
// by id (findings are few), and what the bill never marked is not in the bill.
type daySet struct {
	recs       []dayRecord
	currencies []string // the index a record's currency refers to
	dir        []uint32 // dir[b] is the first record whose hi>>shift is b or more; dir[len-1] = len(recs)
	shift      uint
}

// dayRecord is one stored payment or refund, compacted: the payment id (16 bytes: the id's hex
// decoded), the refund (an FNV-32 of its id within the payment, 0 for the payment itself), the
// amount, and meta: a 20-bit FNV of the transaction id (0 for none), the currency's index, and
// flags. A hash collision could only make two refunds of one payment, or two transaction ids,
// compare equal: never a payment another's.
type dayRecord struct {
	hi, lo uint64 // the payment id's 16 bytes, big-endian: compared as two words
	amount int64
	sub    uint32
	meta   uint32 // tx hash << 12 | currency << 4 | flags
}

// Record flags (meta's low 4 bits).
const (
	recSeen         = 1 << iota // a row of the bill matched it
	recViaReconcile             // payrelay learnt of it from an earlier reconciliation
)

// DayRecordBytes is the memory a reconciliation holds per stored payment or refund of the day
// (infra/README.md's figure), besides its share of the directory (under 2 bytes).
const DayRecordBytes = 32

func (r *dayRecord) flags() uint32 { return r.meta & 0xF }
func (r *dayRecord) tx() uint32    { return r.meta >> 12 }
func (r *dayRecord) cur() int      { return int(r.meta>>4) & 0xFF }

// refundHash names a refund within its payment; never 0 (0 is the payment itself).
func refundHash(refundID string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(refundID))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// txHash is a transaction id's 20-bit hash; 0 for none.
func txHash(id string) uint32 {
	if id == "" {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	return h.Sum32()&0xFFFFF | 1
}

// refundSub is the record sub-key a bill's entry looks for.
func refundSub(e Result) uint32 {
	if e.Type == TypePaymentRefunded && e.Refund != nil {
		return refundHash(e.Refund.ID)
	}
	return 0
}

// paymentWords is PaymentID's 16 bytes as the two words a record keys them by, without the
// hex a document id needs (a bill's row is looked up by them).
func paymentWords(env Environment, provider, merchant, orderID string) (hi, lo uint64) {
	sum := paymentSum(env, provider, merchant, orderID)
	return binary.BigEndian.Uint64(sum[:8]), binary.BigEndian.Uint64(sum[8:16])
}

// idWords is a payment id as the two words a record keys it by.
func idWords(id string) (hi, lo uint64) {
	var k [16]byte
	if len(id) == 32 {
		if _, err := hex.Decode(k[:], []byte(id)); err == nil {
			return binary.BigEndian.Uint64(k[:8]), binary.BigEndian.Uint64(k[8:])
		}
	}
	// Not an id payrelay made (tests): its hash stands in.
	h := fnv.New128a()
	h.Write([]byte(id))
	h.Sum(k[:0])
	return binary.BigEndian.Uint64(k[:8]), binary.BigEndian.Uint64(k[8:])
}

func (r *dayRecord) paymentID() string {
	var k [16]byte
	binary.BigEndian.PutUint64(k[:8], r.hi)
	binary.BigEndian.PutUint64(k[8:], r.lo)
	return hex.EncodeToString(k[:])
}

// currency is the index of c in the set's table, added when new (at most 256 currencies in a
// day; past that the last index stands for all, and amounts are still compared).
func (s *daySet) currency(c string) uint32 {
	for i, x := range s.currencies {
		if x == c {
			return uint32(i)
		}
	}
	if len(s.currencies) < 256 {
		s.currencies = append(s.currencies, c)
	}
	return uint32(len(s.currencies) - 1)
}

// addPayment adds p's records of day: its payment when it was paid that day (kind paid), its
// refunds of that day (kind refund).
func (s *daySet) addPayment(p *Payment, kind, day string) {
	hi, lo := idWords(p.ID)
	for _, n := range p.Notifications {
		var flags uint32
		if n.Via == ViaReconcile {
			flags |= recViaReconcile
		}
		switch {
		case kind == billPaid && n.Type == TypePaymentSucceeded && !p.PaidAt.IsZero() && BillDay(p.PaidAt) == day:
			s.recs = append(s.recs, dayRecord{hi: hi, lo: lo, amount: p.AmountMinor, meta: txHash(p.TransactionID)<<12 | s.currency(p.Currency)<<4 | flags})
		case kind == billRefund && n.Type == TypePaymentRefunded && n.Refund != nil && BillDay(n.Refund.RefundedAt) == day:
			s.recs = append(s.recs, dayRecord{hi: hi, lo: lo, sub: refundHash(n.Refund.ID), amount: n.Refund.AmountMinor, meta: flags})
		}
	}
}

func compareRec(a, b *dayRecord) int {
	switch {
	case a.hi != b.hi:
		return cmp.Compare(a.hi, b.hi)
	case a.lo != b.lo:
		return cmp.Compare(a.lo, b.lo)
	}
	return cmp.Compare(a.sub, b.sub)
}

// seal sorts the records, drops duplicates (a payment under two day keys) and builds the
// directory; the set is then read only.
func (s *daySet) seal() {
	slices.SortFunc(s.recs, func(a, b dayRecord) int { return compareRec(&a, &b) })
	s.recs = slices.CompactFunc(s.recs, func(a, b dayRecord) bool { return compareRec(&a, &b) == 0 })
	s.recs = slices.Clip(s.recs)
	bits := uint(0)
	for bits < 32 && 4<<bits < len(s.recs) {
		bits++
	}
	s.shift = 64 - bits
	s.dir = make([]uint32, 1<<bits+1)
	r := 0
	for b := range s.dir {
		for r < len(s.recs) && (b == len(s.dir)-1 || s.recs[r].hi>>s.shift < uint64(b)) {
			r++
		}
		s.dir[b] = uint32(r)
	}
}

// findWords returns the record of the payment keyed hi, lo (sub 0) or of its refund sub, or
// nil: a binary search within the directory's run for hi's top bits.
func (s *daySet) findWords(hi, lo uint64, sub uint32) *dayRecord {
	key := dayRecord{hi: hi, lo: lo, sub: sub}
	i, j := 0, len(s.recs)
	if s.dir != nil {
		b := hi >> s.shift
		i, j = int(s.dir[b]), int(s.dir[b+1])
	}
	for i < j {
		h := int(uint(i+j) >> 1)
		if compareRec(&s.recs[h], &key) < 0 {
			i = h + 1
		} else {
			j = h
		}
	}
	if i < len(s.recs) && compareRec(&s.recs[i], &key) == 0 {
		return &s.recs[i]
	}
	return nil
}

// differs says how a bill's entry contradicts the record it matched, or "".
func (s *daySet) differs(r *dayRecord, e Result) string {
	if e.Type == TypePaymentRefunded {
		if r.amount != e.Refund.AmountMinor {
			return fmt.Sprintf("the bill refunds %d, payrelay recorded %d for refund %s", e.Refund.AmountMinor, r.amount, e.Refund.ID)
		}
		return ""
	}
	q := e.Payment
	cur := s.currencies[r.cur()]
	switch {
	case r.amount != q.AmountMinor || cur != q.Currency:
		return fmt.Sprintf("the bill states %d %s, payrelay stored %d %s", q.AmountMinor, q.Currency, r.amount, cur)
	case r.tx() != 0 && q.TransactionID != "" && r.tx() != txHash(q.TransactionID):
		return fmt.Sprintf("the bill's transaction %s is not the stored one", q.TransactionID)
	}
	return ""
}

// DayRecordSize is the size of one record as the compiler lays it out (DayRecordBytes states it).
func DayRecordSize() int { return int(unsafe.Sizeof(dayRecord{})) }

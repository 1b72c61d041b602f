package provider

import (
	"bufio"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/text/encoding/simplifiedchinese"
)

// Bills are read as streams: unpacked, decoded and split line by line as they download, never
// held whole, so a day's size bounds nothing but time. What stays bounded is each line
// (MaxBillLine) and how much the unpacked stream may exceed the packed one (MaxInflation: a
// bill's CSV text packs 5 to 15 times; a zip bomb thousands of times).
const (
	MaxBillLine  = 64 << 10
	MaxInflation = 200
)

// ErrInflation: a download inflating past MaxInflation times its packed size.
var ErrInflation = fmt.Errorf("the bill inflates more than %d times its packed size: refused as a zip bomb", MaxInflation)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// inflationGuard passes an unpacked stream through, refusing it once it exceeds MaxInflation
// times the packed bytes read so far (and 1 MiB of slack for a small file's headers).
type inflationGuard struct {
	r      io.Reader
	packed *countingReader
	n      int64
}

func (g *inflationGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	g.n += int64(n)
	if g.n > MaxInflation*g.packed.n+1<<20 {
		return n, ErrInflation
	}
	return n, err
}

// eachLine calls f with each line of r (CR LF or LF ended, the ending dropped), numbered from 1,
// refusing a line over MaxBillLine bytes or one that is not UTF-8.
func eachLine(r io.Reader, what string, f func(n int, line string) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		var line []byte
		for whole := true; ; whole = false {
			chunk, isPrefix, err := br.ReadLine()
			if err == io.EOF && len(line) == 0 {
				return nil
			}
			if err != nil && err != io.EOF {
				return fmt.Errorf("%s: %w", what, err)
			}
			if whole && !isPrefix {
				line = chunk // the line fits the buffer: read in place, copied once to a string below
			} else {
				line = append(line, chunk...)
			}
			if len(line) > MaxBillLine {
				return fmt.Errorf("%s line %d: longer than %d bytes", what, n, MaxBillLine)
			}
			if !isPrefix {
				break
			}
		}
		if !utf8.Valid(line) {
			return fmt.Errorf("%s line %d: not UTF-8 text", what, n)
		}
		if err := f(n, string(line)); err != nil {
			return err
		}
	}
}

// billTimes parses a bill's times (yyyy-MM-dd HH:mm:ss, Beijing time), remembering the last:
// a busy day's rows share their second with the row before, and parsing was a tenth of a row's
// reading.
type billTimes struct {
	last string
	at   time.Time
}

func (t *billTimes) parse(s string) (time.Time, error) {
	if s == t.last && s != "" {
		return t.at, nil
	}
	at, err := time.ParseInLocation(time.DateTime, s, shanghai)
	if err != nil {
		return at, err
	}
	t.last, t.at = s, at
	return at, nil
}

// zipEntry finds, reading r from its start (a zip file as it downloads: local file headers in
// order, no seeking to the central directory), the first entry whose name (GBK unless flagged
// UTF-8) satisfies want, and returns its unpacked content as a stream, through an
// inflationGuard. Entries before it are unpacked and discarded. Stored and deflated entries are
// read, with or without a data descriptor; ZIP64 is refused (a bill past 4 GiB).
func zipEntry(r io.Reader, want func(name string) bool) (io.Reader, error) {
	packed := &countingReader{r: r}
	br := bufio.NewReaderSize(packed, 64<<10)
	for {
		var h [30]byte
		if _, err := io.ReadFull(br, h[:4]); err != nil {
			return nil, fmt.Errorf("zip: %w", err)
		}
		if binary.LittleEndian.Uint32(h[:4]) != 0x04034b50 {
			return nil, errors.New("zip: no entry matches (reached the central directory)")
		}
		if _, err := io.ReadFull(br, h[4:]); err != nil {
			return nil, fmt.Errorf("zip: %w", err)
		}
		flags := binary.LittleEndian.Uint16(h[6:])
		method := binary.LittleEndian.Uint16(h[8:])
		compSize := binary.LittleEndian.Uint32(h[18:])
		nameLen := binary.LittleEndian.Uint16(h[26:])
		extraLen := binary.LittleEndian.Uint16(h[28:])
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, fmt.Errorf("zip: %w", err)
		}
		if _, err := br.Discard(int(extraLen)); err != nil {
			return nil, fmt.Errorf("zip: %w", err)
		}
		if compSize == 0xFFFFFFFF {
			return nil, errors.New("zip: a ZIP64 entry (a bill past 4 GiB) is not read")
		}
		descriptor := flags&0x8 != 0
		var body io.Reader
		switch {
		case method == 8:
			body = flate.NewReader(br) // br is an io.ByteReader: flate reads no byte past the entry
		case method == 0 && !descriptor:
			body = io.LimitReader(br, int64(compSize))
		default:
			return nil, fmt.Errorf("zip: compression method %d is not read", method)
		}
		text := string(name)
		if flags&0x800 == 0 {
			if d, err := simplifiedchinese.GB18030.NewDecoder().String(text); err == nil {
				text = d
			}
		}
		guarded := &inflationGuard{r: body, packed: packed}
		if want(text) {
			return guarded, nil
		}
		if _, err := io.Copy(io.Discard, guarded); err != nil {
			return nil, fmt.Errorf("zip: %s: %w", text, err)
		}
		if descriptor {
			// crc32, compressed and uncompressed sizes, after an optional signature.
			var d [16]byte
			if _, err := io.ReadFull(br, d[:4]); err != nil {
				return nil, fmt.Errorf("zip: %w", err)
			}
			n := 8
			if binary.LittleEndian.Uint32(d[:4]) == 0x08074b50 {
				n = 12
			}
			if _, err := br.Discard(n); err != nil {
				return nil, fmt.Errorf("zip: %w", err)
			}
		}
	}
}

// isAlipayDetail names the detail CSV in an Alipay bill's zip: <PID>_<yyyyMMdd>_业务明细.csv
// (the summary is ..._业务明细(汇总).csv).
func isAlipayDetail(name string) bool { return strings.HasSuffix(name, "业务明细.csv") }

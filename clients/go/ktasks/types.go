package ktasks

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Argument types beyond msgpack's own (docs/protocol.md, "Extension types"). A time.Time is an
// aware datetime (extension 1) written with its own UTC offset; the types below stand for what Go
// has no standard type for.

// Date is a calendar date without a time (Python datetime.date), extension 2.
type Date struct {
	Year  int
	Month time.Month
	Day   int
}

func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Year, int(d.Month), d.Day) }

// NaiveDateTime is a date and time without a UTC offset (Python naive datetime), extension 5.
// Only the wall clock of Time is written; its location is ignored.
type NaiveDateTime struct{ Time time.Time }

// Decimal is an exact decimal number kept as its text (Python decimal.Decimal), extension 3.
type Decimal string

// UUID is a UUID's 16 bytes (Python uuid.UUID), extension 4.
type UUID [16]byte

var decimalRE = regexp.MustCompile(`^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(Infinity|inf|sNaN|NaN)$`)

// ParseUUID reads 32 hex digits, with or without dashes.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		return u, fmt.Errorf("not a UUID: %q", s)
	}
	copy(u[:], raw)
	return u, nil
}

func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// isoformat writes a time as Python's datetime.isoformat() does: microseconds only when not zero,
// then the UTC offset as +HH:MM (time.Time's sub-microsecond digits are dropped).
func isoformat(t time.Time, withOffset bool) string {
	s := t.Format("2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		s += fmt.Sprintf(".%06d", us)
	}
	if withOffset {
		s += t.Format("-07:00")
	}
	return s
}

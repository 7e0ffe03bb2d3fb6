// Package ktasks enqueues ktasks tasks from Go: the reference Go producer of the ktasks wire
// format (docs/protocol.md in the ktasks repository).
package ktasks

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

const (
	// FormatVersion is the wire format version this package writes.
	FormatVersion = 1
	HeaderTask    = "ktasks-task"
	HeaderID      = "ktasks-id"
	HeaderVersion = "ktasks-v"
	// MaxArgDepth is how deep arrays and maps may nest inside one argument (the decoder's limit
	// of 1024 levels, minus the envelope and args/kwargs).
	MaxArgDepth = 1022

	extDatetime      = 1
	extDate          = 2
	extDecimal       = 3
	extUUID          = 4
	extNaiveDatetime = 5
)

// ReservedHeaderPrefixes are header name prefixes only ktasks itself writes (retries, dead letters, replays).
var ReservedHeaderPrefixes = []string{"ktasks-", "kafka_dlt-"}

// ErrEncode is wrapped by every error about what cannot be sent.
var ErrEncode = errors.New("ktasks: cannot encode")

func encodeErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrEncode, fmt.Sprintf(format, args...))
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Envelope is the task message: the fields of the msgpack map, in the spec's order.
type Envelope struct {
	ID             string
	Task           string
	Args           []any
	Kwargs         map[string]any
	IdempotencyKey string  // "" is written as nil: the ledger then uses the id
	Created        float64 // seconds since the epoch
	Due            *float64
	Expires        *float64 // written as exp only when set
}

// NewID returns a fresh task id: a random (version 4) UUID as 32 lowercase hex digits.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return hex.EncodeToString(b[:])
}

// Encode returns the envelope's msgpack bytes: the 9 fields in order (then exp when set), created, due
// and exp always float64.
func (e *Envelope) Encode() ([]byte, error) {
	if e.Task == "" {
		return nil, encodeErr("task name must not be empty")
	}
	if e.ID == "" {
		return nil, encodeErr("task %s: id must not be empty", e.Task)
	}
	if math.IsNaN(e.Created) || math.IsInf(e.Created, 0) || (e.Due != nil && (math.IsNaN(*e.Due) || math.IsInf(*e.Due, 0))) {
		return nil, encodeErr("task %s: created and due must be finite", e.Task)
	}
	fields := 9
	if e.Expires != nil {
		if *e.Expires <= e.Created || (e.Due != nil && *e.Expires <= *e.Due) || math.IsInf(*e.Expires, 0) {
			return nil, encodeErr("task %s: expires is not after the time the task is due, so it would never run", e.Task)
		}
		fields = 10
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	w := &writer{enc: enc, buf: &buf}
	w.check(enc.EncodeMapLen(fields))
	w.key("v")
	w.check(enc.EncodeInt(FormatVersion))
	w.key("id")
	w.check(enc.EncodeString(e.ID))
	w.key("task")
	w.check(enc.EncodeString(e.Task))
	w.key("args")
	w.check(enc.EncodeArrayLen(len(e.Args)))
	for i, a := range e.Args {
		if err := w.value(reflect.ValueOf(a), fmt.Sprintf("task %s: positional argument %d", e.Task, i), 1); err != nil {
			return nil, err
		}
	}
	w.key("kwargs")
	if err := w.value(reflect.ValueOf(e.Kwargs), fmt.Sprintf("task %s: keyword arguments", e.Task), 0); err != nil {
		return nil, err
	}
	w.key("attempt")
	w.check(enc.EncodeInt(0))
	w.key("ikey")
	if e.IdempotencyKey == "" {
		w.check(enc.EncodeNil())
	} else {
		w.check(enc.EncodeString(e.IdempotencyKey))
	}
	w.key("created")
	w.check(enc.EncodeFloat64(e.Created))
	w.key("due")
	if e.Due == nil {
		w.check(enc.EncodeNil())
	} else {
		w.check(enc.EncodeFloat64(*e.Due))
	}
	if e.Expires != nil {
		w.key("exp")
		w.check(enc.EncodeFloat64(*e.Expires))
	}
	if w.err != nil {
		return nil, w.err
	}
	return buf.Bytes(), nil
}

type writer struct {
	enc *msgpack.Encoder
	buf *bytes.Buffer // the encoder writes here unbuffered, so payloads may be appended directly
	err error
}

func (w *writer) check(err error) {
	if w.err == nil && err != nil {
		w.err = err
	}
}

func (w *writer) key(name string) { w.check(w.enc.EncodeString(name)) }

func (w *writer) ext(code int8, payload []byte) error {
	if err := w.enc.EncodeExtHeader(code, len(payload)); err != nil {
		return err
	}
	_, err := w.buf.Write(payload)
	return err
}

var (
	timeType     = reflect.TypeOf(time.Time{})
	dateType     = reflect.TypeOf(Date{})
	naiveType    = reflect.TypeOf(NaiveDateTime{})
	decimalType  = reflect.TypeOf(Decimal(""))
	uuidType     = reflect.TypeOf(UUID{})
	bytesElemTyp = reflect.TypeOf(byte(0))
)

// value writes one argument (depth: how many arrays/maps enclose it inside the argument, plus one).
func (w *writer) value(v reflect.Value, where string, depth int) error {
	if !v.IsValid() {
		return w.enc.EncodeNil()
	}
	switch v.Type() {
	case timeType:
		return w.ext(extDatetime, []byte(isoformat(v.Interface().(time.Time), true)))
	case dateType:
		return w.ext(extDate, []byte(v.Interface().(Date).String()))
	case naiveType:
		return w.ext(extNaiveDatetime, []byte(isoformat(v.Interface().(NaiveDateTime).Time, false)))
	case decimalType:
		d := v.Interface().(Decimal)
		if !decimalRE.MatchString(string(d)) {
			return encodeErr("%s: %q is not a decimal number", where, string(d))
		}
		return w.ext(extDecimal, []byte(d))
	case uuidType:
		u := v.Interface().(UUID)
		return w.ext(extUUID, u[:])
	}
	switch v.Kind() {
	case reflect.Bool:
		return w.enc.EncodeBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return w.enc.EncodeInt(v.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return w.enc.EncodeUint(v.Uint())
	case reflect.Float32, reflect.Float64:
		return w.enc.EncodeFloat64(v.Float()) // always float64, as Python writes floats
	case reflect.String:
		return w.enc.EncodeString(v.String())
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return w.enc.EncodeNil()
		}
		return w.value(v.Elem(), where, depth)
	}
	if (v.Kind() == reflect.Slice || v.Kind() == reflect.Array) && v.Type().Elem() == bytesElemTyp {
		if err := w.enc.EncodeBytesLen(v.Len()); err != nil {
			return err
		}
		b := make([]byte, v.Len())
		reflect.Copy(reflect.ValueOf(b), v)
		_, err := w.buf.Write(b)
		return err
	}
	if depth > MaxArgDepth {
		return encodeErr("%s: nested more than %d arrays or maps deep", shorten(where), MaxArgDepth)
	}
	switch v.Kind() {
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return w.enc.EncodeArrayLen(0)
		}
		if err := w.enc.EncodeArrayLen(v.Len()); err != nil {
			return err
		}
		for i := 0; i < v.Len(); i++ {
			if err := w.value(v.Index(i), fmt.Sprintf("%s[%d]", where, i), depth+1); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			return encodeErr("%s: map keys must be strings, not %s", where, v.Type().Key())
		}
		// Go maps have no order: keys are written sorted, so the bytes are reproducible.
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		if err := w.enc.EncodeMapLen(len(keys)); err != nil {
			return err
		}
		for _, k := range keys {
			if err := w.enc.EncodeString(k); err != nil {
				return err
			}
			item := v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key()))
			if err := w.value(item, where+"."+k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return encodeErr("%s: a %s cannot be encoded (see docs/protocol.md for the types)", where, v.Type())
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Options are enqueue's optional settings.
type Options struct {
	Topic          string    // the task topic; default: the Client's
	Key            []byte    // routing key: the same key always lands on the same partition
	TaskID         string    // default: NewID()
	IdempotencyKey string    // names the execution in the worker's ledger; default: the task id
	Headers        []Header  // more headers, after the reserved three; never a reserved name
	Expires        time.Time // not run after this time (the zero time: never expires)
}

// Record is a task message ready to send.
type Record struct {
	ID      string
	Value   []byte
	Key     []byte
	Headers []Header
}

// BuildRecord returns the record that enqueues task(*args, **kwargs), created at created
// (seconds since the epoch). Client.Enqueue calls it with the current time.
func BuildRecord(task string, args []any, kwargs map[string]any, opts Options, created float64, due *float64) (*Record, error) {
	id := opts.TaskID
	if id == "" {
		id = NewID()
	}
	env := Envelope{ID: id, Task: task, Args: args, Kwargs: kwargs, IdempotencyKey: opts.IdempotencyKey,
		Created: created, Due: due}
	if !opts.Expires.IsZero() {
		exp := float64(opts.Expires.UnixMicro()) / 1e6
		env.Expires = &exp
	}
	value, err := env.Encode()
	if err != nil {
		return nil, err
	}
	headers := []Header{
		{HeaderTask, []byte(task)},
		{HeaderID, []byte(id)},
		{HeaderVersion, []byte(fmt.Sprint(FormatVersion))},
	}
	for _, h := range opts.Headers {
		lower := strings.ToLower(h.Key)
		for _, p := range ReservedHeaderPrefixes {
			if strings.HasPrefix(lower, p) {
				return nil, encodeErr("task %s: header %q is reserved for ktasks", task, h.Key)
			}
		}
		headers = append(headers, h)
	}
	return &Record{ID: id, Value: value, Key: opts.Key, Headers: headers}, nil
}

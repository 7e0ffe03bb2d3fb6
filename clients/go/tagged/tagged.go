// Package tagged reads the test vectors' tagged JSON (protocol/vectors/README.md) into Go values
// the ktasks package encodes; used by the vector tests and the ktasks-enqueue command.
package tagged

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/ktasks/ktasks/clients/go/ktasks"
)

// Parse decodes tagged JSON text.
func Parse(text []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	return Convert(raw)
}

// Convert turns a JSON value decoded with UseNumber into the Go value it stands for.
func Convert(raw any) (any, error) {
	switch v := raw.(type) {
	case json.Number:
		return integer(v.String())
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			c, err := Convert(item)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		if len(v) == 1 {
			for tag, inner := range v {
				if len(tag) > 0 && tag[0] == '$' {
					return untag(tag, inner)
				}
			}
		}
		out := make(map[string]any, len(v))
		for k, item := range v {
			c, err := Convert(item)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	}
	return raw, nil // nil, bool, string
}

func integer(text string) (any, error) {
	n, ok := new(big.Int).SetString(text, 10)
	if !ok {
		return nil, fmt.Errorf("untagged non-integer %s: write {\"$float\": %s}", text, text)
	}
	if n.IsInt64() {
		return n.Int64(), nil
	}
	if n.IsUint64() {
		return n.Uint64(), nil
	}
	return nil, fmt.Errorf("integer %s is outside msgpack's range", text)
}

func untag(tag string, inner any) (any, error) {
	text := fmt.Sprint(inner)
	switch tag {
	case "$float":
		f, err := inner.(json.Number).Float64()
		return f, err
	case "$int":
		return integer(text)
	case "$bytes":
		return hex.DecodeString(text)
	case "$datetime":
		return time.Parse("2006-01-02T15:04:05.999999-07:00", text)
	case "$naive_datetime":
		t, err := time.Parse("2006-01-02T15:04:05.999999", text)
		return ktasks.NaiveDateTime{Time: t}, err
	case "$date":
		t, err := time.Parse("2006-01-02", text)
		return ktasks.Date{Year: t.Year(), Month: t.Month(), Day: t.Day()}, err
	case "$decimal":
		return ktasks.Decimal(text), nil
	case "$uuid":
		return ktasks.ParseUUID(text)
	}
	return nil, fmt.Errorf("unknown tag %s", tag)
}

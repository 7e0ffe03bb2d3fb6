package ktasks_test

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ktasks/ktasks/clients/go/ktasks"
	"github.com/ktasks/ktasks/clients/go/tagged"
)

func vectorsDir() string {
	if dir := os.Getenv("KTASKS_VECTORS"); dir != "" {
		return dir
	}
	return filepath.Join("..", "..", "..", "protocol", "vectors")
}

type validVector struct {
	Envelope      map[string]json.RawMessage `json:"envelope"`
	Key           *string                    `json:"key"`
	CallerHeaders [][2]string                `json:"caller_headers"`
	Value         string                     `json:"value"`
	Headers       [][2]string                `json:"headers"`
	NotFor        map[string]string          `json:"not_for"`
}

func field(t *testing.T, v validVector, name string) any {
	t.Helper()
	value, err := tagged.Parse(v.Envelope[name])
	if err != nil {
		t.Fatalf("field %s: %v", name, err)
	}
	return value
}

func TestVectors(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(vectorsDir(), "valid", "*.json"))
	sort.Strings(paths)
	if len(paths) < 10 {
		t.Fatalf("only %d vectors in %s", len(paths), vectorsDir())
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var v validVector
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			if reason, ok := v.NotFor["go"]; ok {
				t.Skip(reason)
			}
			opts := ktasks.Options{TaskID: field(t, v, "id").(string)}
			if ikey, ok := field(t, v, "ikey").(string); ok {
				opts.IdempotencyKey = ikey
			}
			if v.Key != nil {
				opts.Key = []byte(*v.Key)
			}
			for _, h := range v.CallerHeaders {
				opts.Headers = append(opts.Headers, ktasks.Header{Key: h[0], Value: []byte(h[1])})
			}
			var due *float64
			if d, ok := field(t, v, "due").(float64); ok {
				due = &d
			}
			if raw, ok := v.Envelope["exp"]; ok {
				exp, err := tagged.Parse(raw)
				if err != nil {
					t.Fatal(err)
				}
				opts.Expires = time.UnixMicro(int64(math.Round(exp.(float64) * 1e6)))
			}
			kwargs, _ := field(t, v, "kwargs").(map[string]any)
			rec, err := ktasks.BuildRecord(field(t, v, "task").(string), field(t, v, "args").([]any), kwargs, opts,
				field(t, v, "created").(float64), due)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(rec.Value); got != v.Value {
				t.Errorf("value\n got %s\nwant %s", got, v.Value)
			}
			if (v.Key == nil) != (rec.Key == nil) || (v.Key != nil && string(rec.Key) != *v.Key) {
				t.Errorf("key %q, want %v", rec.Key, v.Key)
			}
			var headers [][2]string
			for _, h := range rec.Headers {
				headers = append(headers, [2]string{h.Key, string(h.Value)})
			}
			if got, want := jsonText(headers), jsonText(v.Headers); got != want {
				t.Errorf("headers %s, want %s", got, want)
			}
		})
	}
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestKeyedRecordsGoToTheMurmur2Partition(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(vectorsDir(), "partitions.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []struct {
			Key        string `json:"key"`
			Partitions int    `json:"partitions"`
			Partition  int    `json:"partition"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.Cases) == 0 {
		t.Fatalf("partitions.json: %v", err)
	}
	// The partitioner NewClient configures.
	p := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for _, c := range doc.Cases {
		if got := p.Partition(&kgo.Record{Key: []byte(c.Key)}, c.Partitions); got != c.Partition {
			t.Errorf("key %q over %d partitions: %d, want %d", c.Key, c.Partitions, got, c.Partition)
		}
	}
}

const id = "0f3c2a9e4b7d4c1a8e5f6a7b8c9d0e1f"

func build(args []any, kwargs map[string]any, opts ktasks.Options) (*ktasks.Record, error) {
	opts.TaskID = id
	return ktasks.BuildRecord("t", args, kwargs, opts, 1733300000.25, nil)
}

func TestTimesAreWrittenAsPythonsIsoformat(t *testing.T) {
	paris := time.FixedZone("", 3600)
	for when, want := range map[time.Time]string{
		time.Date(2024, 5, 1, 12, 30, 45, 123456789, time.UTC): "2024-05-01T12:30:45.123456+00:00",
		time.Date(2024, 5, 1, 12, 30, 45, 0, paris):            "2024-05-01T12:30:45+01:00",
	} {
		rec, err := build([]any{when}, nil, ktasks.Options{})
		if err != nil || !strings.Contains(string(rec.Value), want) {
			t.Errorf("%v: want %s in the value (%v)", when, want, err)
		}
	}
}

func TestWhatHasNoWireFormIsRefusedNamingTheArgument(t *testing.T) {
	type point struct{ X int }
	nest := func(n int) any {
		var v any = []any{}
		for i := 1; i < n; i++ {
			v = []any{v}
		}
		return v
	}
	if _, err := build([]any{nest(ktasks.MaxArgDepth)}, nil, ktasks.Options{}); err != nil {
		t.Fatalf("depth %d: %v", ktasks.MaxArgDepth, err)
	}
	cases := map[string]struct {
		args   []any
		kwargs map[string]any
		opts   ktasks.Options
	}{
		"positional argument 0: a ktasks_test.point cannot be encoded": {args: []any{point{1}}},
		"keyword arguments.cb: a func() cannot be encoded":             {kwargs: map[string]any{"cb": func() {}}},
		"map keys must be strings":                                     {args: []any{map[int]string{1: "one"}}},
		"nested more than 1022 arrays or maps deep":                    {args: []any{nest(ktasks.MaxArgDepth + 1)}},
		`"not a number" is not a decimal number`:                       {args: []any{ktasks.Decimal("not a number")}},
		`header "ktasks-force" is reserved for ktasks`:                 {opts: ktasks.Options{Headers: []ktasks.Header{{Key: "ktasks-force", Value: []byte("1")}}}},
		`header "KAFKA_DLT-original-topic" is reserved`:                {opts: ktasks.Options{Headers: []ktasks.Header{{Key: "KAFKA_DLT-original-topic"}}}},
		"would never run": {opts: ktasks.Options{Expires: time.Unix(1733300000, 0)}},
	}
	for want, c := range cases {
		_, err := build(c.args, c.kwargs, c.opts)
		if err == nil || !errors.Is(err, ktasks.ErrEncode) || !strings.Contains(err.Error(), want) {
			t.Errorf("want an ErrEncode saying %q, got %v", want, err)
		}
	}
}

func TestNewIDIsAVersion4UUIDInHex(t *testing.T) {
	got := ktasks.NewID()
	if len(got) != 32 || got[12] != '4' || !strings.ContainsRune("89ab", rune(got[16])) {
		t.Fatalf("NewID() = %s", got)
	}
}

// Command ktasks-enqueue sends one ktasks task (or raw bytes) to Kafka and prints where it went.
//
//	ktasks-enqueue enqueue -bootstrap HOST:PORT -topic TOPIC -task NAME [-args JSON] [-kwargs JSON]
//	                       [-key KEY] [-idempotency-key KEY] [-task-id ID] [-header NAME=VALUE ...]
//	ktasks-enqueue raw     -bootstrap HOST:PORT -topic TOPIC -value-hex HEX [-value-hex HEX ...] [-key KEY]
//	                       [-header NAME=VALUE ...]
//
// -args and -kwargs are JSON in the test vectors' tagged notation (protocol/vectors/README.md).
// Prints one JSON line per record: {"id", "topic", "partition", "offset"}; raw sends one record per
// -value-hex, in order, as they are (for example invalid test vectors).
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ktasks/ktasks/clients/go/ktasks"
	"github.com/ktasks/ktasks/clients/go/tagged"
)

type stringList []string

func (s *stringList) String() string { return fmt.Sprint(len(*s), " values") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

type headerList []ktasks.Header

func (h *headerList) String() string { return fmt.Sprint(len(*h), " headers") }

func (h *headerList) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", s)
	}
	*h = append(*h, ktasks.Header{Key: name, Value: []byte(value)})
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ktasks-enqueue:", err)
		os.Exit(1)
	}
}

func run(argv []string) error {
	if len(argv) == 0 || (argv[0] != "enqueue" && argv[0] != "raw") {
		return errors.New("usage: ktasks-enqueue {enqueue|raw} -bootstrap HOST:PORT -topic TOPIC ...")
	}
	fs := flag.NewFlagSet(argv[0], flag.ContinueOnError)
	bootstrap := fs.String("bootstrap", "", "Kafka bootstrap servers, comma-separated")
	topic := fs.String("topic", "", "task topic")
	task := fs.String("task", "", "task name")
	args := fs.String("args", "[]", "positional arguments (tagged JSON array)")
	kwargs := fs.String("kwargs", "{}", "keyword arguments (tagged JSON object)")
	key := fs.String("key", "", "routing key")
	ikey := fs.String("idempotency-key", "", "idempotency key")
	taskID := fs.String("task-id", "", "task id (default: a fresh one)")
	var values stringList
	fs.Var(&values, "value-hex", "raw: a record value in hex (repeatable)")
	var headers headerList
	fs.Var(&headers, "header", "NAME=VALUE (repeatable)")
	if err := fs.Parse(argv[1:]); err != nil {
		return err
	}
	if *bootstrap == "" || *topic == "" {
		return errors.New("-bootstrap and -topic are required")
	}
	client, err := ktasks.NewClient(strings.Split(*bootstrap, ","), *topic)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var keyBytes []byte
	if *key != "" {
		keyBytes = []byte(*key)
	}
	out := json.NewEncoder(os.Stdout)
	if argv[0] == "raw" {
		if len(values) == 0 {
			return errors.New("raw needs -value-hex")
		}
		for _, text := range values {
			value, err := hex.DecodeString(text)
			if err != nil {
				return fmt.Errorf("-value-hex: %w", err)
			}
			sent, err := client.SendRaw(ctx, *topic, value, keyBytes, headers)
			if err != nil {
				return err
			}
			if err := out.Encode(sent); err != nil {
				return err
			}
		}
		return nil
	}
	if *task == "" {
		return errors.New("enqueue needs -task")
	}
	positional, err := tagged.Parse([]byte(*args))
	if err != nil {
		return fmt.Errorf("-args: %w", err)
	}
	list, ok := positional.([]any)
	if !ok {
		return errors.New("-args must be a JSON array")
	}
	keywords, err := tagged.Parse([]byte(*kwargs))
	if err != nil {
		return fmt.Errorf("-kwargs: %w", err)
	}
	kw, ok := keywords.(map[string]any)
	if !ok {
		return errors.New("-kwargs must be a JSON object")
	}
	sent, err := client.Enqueue(ctx, *task, list, kw, ktasks.Options{Key: keyBytes, TaskID: *taskID,
		IdempotencyKey: *ikey, Headers: headers})
	if err != nil {
		return err
	}
	return out.Encode(sent)
}

package ktasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Client enqueues tasks through a franz-go producer. Topics are created by ktasks (the worker,
// or `ktasks topics create`), never by this client.
type Client struct {
	kafka *kgo.Client
	topic string
}

// Sent says where the broker stored a task message.
type Sent struct {
	ID        string `json:"id"`
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

// NewClient connects to brokers; topic is the default task topic (a ktasks App's is "<app>.tasks").
// More franz-go options (TLS, SASL, ...) may follow.
func NewClient(brokers []string, topic string, more ...kgo.Opt) (*Client, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		// murmur2 of the key, as Kafka's Java client: the partition the wire format promises.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent, acks=all
		// franz-go compresses with snappy by default, which a ktasks worker (kafka-python) reads only
		// with python-snappy installed; uncompressed batches every worker reads (docs/protocol.md).
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	}
	c, err := kgo.NewClient(append(opts, more...)...)
	if err != nil {
		return nil, err
	}
	return &Client{kafka: c, topic: topic}, nil
}

// Close flushes and closes the producer.
func (c *Client) Close() { c.kafka.Close() }

// Enqueue sends task(*args, **kwargs) and returns once the broker stored it (acks=all).
func (c *Client) Enqueue(ctx context.Context, task string, args []any, kwargs map[string]any, opts Options) (Sent, error) {
	topic := opts.Topic
	if topic == "" {
		topic = c.topic
	}
	if topic == "" {
		return Sent{}, fmt.Errorf("task %s: no topic (Options.Topic or NewClient's topic)", task)
	}
	now := float64(time.Now().UnixMicro()) / 1e6
	rec, err := BuildRecord(task, args, kwargs, opts, now, nil)
	if err != nil {
		return Sent{}, err
	}
	sent, err := c.SendRaw(ctx, topic, rec.Value, rec.Key, rec.Headers)
	sent.ID = rec.ID
	return sent, err
}

// SendRaw sends bytes as they are, with the given headers: for tools and tests (for example
// the invalid test vectors). Nothing is checked; Enqueue is the way to send a task.
func (c *Client) SendRaw(ctx context.Context, topic string, value, key []byte, headers []Header) (Sent, error) {
	r := &kgo.Record{Topic: topic, Key: key, Value: value}
	for _, h := range headers {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	res := c.kafka.ProduceSync(ctx, r)
	if err := res.FirstErr(); err != nil {
		return Sent{}, errors.Join(fmt.Errorf("sending to %s failed", topic), err)
	}
	return Sent{Topic: topic, Partition: r.Partition, Offset: r.Offset}, nil
}

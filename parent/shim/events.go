package shim

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Event topics (containerd's runtime topics).
const (
	TopicTaskCreate = "/tasks/create"
	TopicTaskStart  = "/tasks/start"
	TopicTaskExit   = "/tasks/exit"
	TopicTaskDelete = "/tasks/delete"
)

// namespaceKey is the ttrpc metadata key containerd reads the namespace from.
const namespaceKey = "containerd-namespace-ttrpc"

type event struct {
	topic string
	ev    any
	at    time.Time
}

// Publisher forwards task events to containerd's ttrpc events service
// ($TTRPC_ADDRESS), in order, from one goroutine so that an RPC never
// waits for containerd.
type Publisher struct {
	address, namespace string
	log                *slog.Logger
	q                  chan event
	done               chan struct{}
}

// NewPublisher starts a publisher to address (a Unix socket path);
// an empty address discards events.
func NewPublisher(address, namespace string, log *slog.Logger) *Publisher {
	p := &Publisher{address: strings.TrimPrefix(address, "unix://"), namespace: namespace, log: log, q: make(chan event, 64), done: make(chan struct{})}
	go p.run()
	return p
}

// Publish queues ev (an api/events message) for topic.
func (p *Publisher) Publish(topic string, ev any) {
	select {
	case p.q <- event{topic, ev, time.Now()}:
	default:
		p.log.Error("shim: event queue full; event dropped", "topic", topic)
	}
}

// Close sends what is queued (for at most 5 s) and stops.
func (p *Publisher) Close() {
	close(p.q)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

func (p *Publisher) run() {
	defer close(p.done)
	var client *ttrpc.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	for e := range p.q {
		if p.address == "" {
			continue
		}
		for attempt := range 3 {
			if client == nil {
				conn, err := net.DialTimeout("unix", p.address, 5*time.Second)
				if err != nil {
					p.log.Error("shim: connect to containerd's events service", "address", p.address, "err", err)
					time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
					continue
				}
				client = ttrpc.NewClient(conn)
			}
			if err := p.forward(client, e); err != nil {
				p.log.Error("shim: publish event", "topic", e.topic, "err", err)
				client.Close()
				client = nil
				continue
			}
			break
		}
	}
}

func (p *Publisher) forward(c *ttrpc.Client, e event) error {
	a, err := typeurl.MarshalAnyToProto(e.ev)
	if err != nil {
		return fmt.Errorf("shim: marshal event: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{namespaceKey: []string{p.namespace}})
	_, err = eventsapi.NewTTRPCEventsClient(c).Forward(ctx, &eventsapi.ForwardRequest{Envelope: &types.Envelope{
		Timestamp: timestamppb.New(e.at),
		Namespace: p.namespace,
		Topic:     e.topic,
		Event:     a,
	}})
	return err
}

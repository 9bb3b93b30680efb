// A scripted session of nats.go, the Go client: core pub/sub with headers, a queue group,
// request/reply, a denied publish seen by the async error handler while the connection stays up,
// and JetStream publish with a pull consumer that acknowledges. It prints a transcript, one line
// per observation, in the same words as tests/clients/jnats_session: tests/filter_clients.rs runs
// it against a nats-server user and through natsguard with the same permissions and compares.
//
// Usage: nats_go_session <publisher url> <subscriber url> <denied subject>
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Every wait of the session is bounded by this.
const patience = 5 * time.Second

func main() {
	if len(os.Args) != 4 {
		fail("usage: nats_go_session <publisher url> <subscriber url> <denied subject>")
	}
	session(os.Args[1], os.Args[2], os.Args[3])
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nats_go_session: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func connect(url, name string, asyncErrors chan<- string) *nats.Conn {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			asyncErrors <- fmt.Sprintf("%s async error: %v", name, err)
		}))
	check(err, "connect "+name)
	return nc
}

func session(publisherURL, subscriberURL, deniedSubject string) {
	asyncErrors := make(chan string, 16)
	subscriber := connect(subscriberURL, "subscriber", asyncErrors)
	defer subscriber.Close()
	publisher := connect(publisherURL, "publisher", asyncErrors)
	defer publisher.Close()

	events, err := subscriber.SubscribeSync("billing.events.>")
	check(err, "subscribe billing.events.>")
	var workers []*nats.Subscription
	for range 2 {
		worker, err := subscriber.QueueSubscribeSync("billing.jobs", "workers")
		check(err, "queue subscribe billing.jobs")
		workers = append(workers, worker)
	}
	_, err = subscriber.Subscribe("billing.rpc", func(request *nats.Msg) {
		check(request.Respond(append([]byte("pong:"), request.Data...)), "respond")
	})
	check(err, "subscribe billing.rpc")
	check(subscriber.Flush(), "flush subscriber")

	check(publisher.Publish("billing.events.created", []byte("one")), "publish")
	headers := nats.Header{}
	headers.Set("X-Trace", "abc")
	check(publisher.PublishMsg(&nats.Msg{Subject: "billing.events.headers", Header: headers, Data: []byte("two")}), "publish with headers")
	for job := 1; job <= 4; job++ {
		check(publisher.Publish("billing.jobs", fmt.Appendf(nil, "job-%d", job)), "publish job")
	}
	response, err := publisher.Request("billing.rpc", []byte("ping"), patience)
	check(err, "request billing.rpc")
	fmt.Printf("request billing.rpc answered: %s\n", response.Data)

	check(publisher.Publish(deniedSubject, []byte("nope")), "publish the denied subject")
	check(publisher.Flush(), "flush after the denied publish")
	select {
	case line := <-asyncErrors:
		fmt.Println(line)
	case <-time.After(patience):
		fmt.Println("no async error for the denied publish")
	}
	fmt.Printf("publisher connected after the denial: %t\n", publisher.IsConnected())
	check(publisher.Publish("billing.events.after", []byte("three")), "publish after the denial")
	check(publisher.Flush(), "flush")

	for range 3 {
		msg, err := events.NextMsg(patience)
		check(err, "next billing.events message")
		fmt.Printf("received %s: %s%s\n", msg.Subject, msg.Data, headerText(msg.Header))
	}
	fmt.Printf("queue group workers received: %s\n", strings.Join(queueDeliveries(workers, 4), " "))

	jetStream(publisher, subscriber)

	select {
	case line := <-asyncErrors:
		fmt.Println("unexpected " + line)
	default:
	}
}

// headerText is " [K=V]" for the message's headers, sorted; empty without headers.
func headerText(header nats.Header) string {
	var pairs []string
	for key, values := range header {
		pairs = append(pairs, key+"="+strings.Join(values, ","))
	}
	if len(pairs) == 0 {
		return ""
	}
	sort.Strings(pairs)
	return " [" + strings.Join(pairs, " ") + "]"
}

// queueDeliveries collects `count` messages from the members of one queue group, sorted by
// payload (which member gets which message is the server's choice): each job appears once.
func queueDeliveries(members []*nats.Subscription, count int) []string {
	var payloads []string
	deadline := time.Now().Add(patience)
	for len(payloads) < count && time.Now().Before(deadline) {
		for _, member := range members {
			if msg, err := member.NextMsg(10 * time.Millisecond); err == nil {
				payloads = append(payloads, string(msg.Data))
			}
		}
	}
	sort.Strings(payloads)
	return payloads
}

func jetStream(publisher, subscriber *nats.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*patience)
	defer cancel()
	publisherJS, err := jetstream.New(publisher)
	check(err, "jetstream for the publisher")
	_, err = publisherJS.CreateStream(ctx, jetstream.StreamConfig{Name: "BILLING", Subjects: []string{"billing.orders.>"}})
	check(err, "create stream BILLING")
	for order := range 3 {
		ack, err := publisherJS.Publish(ctx, fmt.Sprintf("billing.orders.%d", order), fmt.Appendf(nil, "order %d", order))
		check(err, "jetstream publish")
		fmt.Printf("jetstream stored billing.orders.%d in %s as %d\n", order, ack.Stream, ack.Sequence)
	}
	_, err = publisherJS.CreateOrUpdateConsumer(ctx, "BILLING", jetstream.ConsumerConfig{Durable: "audit", AckPolicy: jetstream.AckExplicitPolicy})
	check(err, "create consumer audit")

	// The subscriber acknowledges through allow_responses: each message's $JS.ACK reply subject.
	subscriberJS, err := jetstream.New(subscriber)
	check(err, "jetstream for the subscriber")
	consumer, err := subscriberJS.Consumer(ctx, "BILLING", "audit")
	check(err, "consumer audit")
	batch, err := consumer.Fetch(3, jetstream.FetchMaxWait(patience))
	check(err, "fetch")
	for msg := range batch.Messages() {
		check(msg.DoubleAck(ctx), "ack")
		fmt.Printf("pull consumer fetched and acked %s: %s\n", msg.Subject(), msg.Data())
	}
	check(batch.Error(), "fetch batch")
	audit, err := publisherJS.Consumer(ctx, "BILLING", "audit")
	check(err, "consumer audit for the publisher")
	info, err := audit.Info(ctx)
	check(err, "consumer info")
	fmt.Printf("consumer audit: %d delivered, %d awaiting an ack\n", info.Delivered.Consumer, info.NumAckPending)
}

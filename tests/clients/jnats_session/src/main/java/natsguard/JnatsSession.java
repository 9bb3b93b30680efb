package natsguard;

import io.nats.client.Connection;
import io.nats.client.ConsumerContext;
import io.nats.client.Dispatcher;
import io.nats.client.ErrorListener;
import io.nats.client.FetchConsumeOptions;
import io.nats.client.FetchConsumer;
import io.nats.client.JetStreamManagement;
import io.nats.client.Message;
import io.nats.client.Nats;
import io.nats.client.Options;
import io.nats.client.Subscription;
import io.nats.client.api.AckPolicy;
import io.nats.client.api.ConsumerConfiguration;
import io.nats.client.api.ConsumerInfo;
import io.nats.client.api.PublishAck;
import io.nats.client.api.StreamConfiguration;
import io.nats.client.impl.Headers;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A scripted session of jnats, the Java client: core pub/sub with headers, a queue group,
 * request/reply, a denied publish seen by the error listener while the connection stays up, and
 * JetStream publish with a pull consumer that acknowledges. It prints a transcript, one line per
 * observation, in the same words as tests/clients/nats_go_session: tests/filter_clients.rs runs it
 * against a nats-server user and through natsguard with the same permissions and compares.
 *
 * <p>Usage: JnatsSession &lt;publisher url&gt; &lt;subscriber url&gt; &lt;denied subject&gt;
 */
public final class JnatsSession {
  /** Every wait of the session is bounded by this. */
  private static final Duration PATIENCE = Duration.ofSeconds(5);

  private final BlockingQueue<String> asyncErrors = new LinkedBlockingQueue<>();

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: JnatsSession <publisher url> <subscriber url> <denied subject>");
      System.exit(2);
    }
    new JnatsSession().run(args[0], args[1], args[2]);
  }

  private Connection connect(String url, String name) throws Exception {
    ErrorListener listener =
        new ErrorListener() {
          @Override
          public void errorOccurred(Connection connection, String error) {
            asyncErrors.add(name + " async error: " + error);
          }
        };
    Options options =
        Options.builder()
            .server(url)
            .connectionName(name)
            .maxReconnects(0)
            .errorListener(listener)
            .build();
    return Nats.connect(options);
  }

  private static byte[] bytes(String text) {
    return text.getBytes(StandardCharsets.UTF_8);
  }

  private static String text(Message message) {
    return new String(message.getData(), StandardCharsets.UTF_8);
  }

  private static Message next(Subscription subscription) throws InterruptedException {
    Message message = subscription.nextMessage(PATIENCE);
    if (message == null) {
      throw new IllegalStateException("no message on " + subscription.getSubject() + " in time");
    }
    return message;
  }

  private void run(String publisherUrl, String subscriberUrl, String deniedSubject)
      throws Exception {
    try (Connection subscriber = connect(subscriberUrl, "subscriber");
        Connection publisher = connect(publisherUrl, "publisher")) {
      Subscription events = subscriber.subscribe("billing.events.>");
      List<Subscription> workers =
          List.of(subscriber.subscribe("billing.jobs", "workers"), subscriber.subscribe("billing.jobs", "workers"));
      Dispatcher responder =
          subscriber.createDispatcher(
              request -> subscriber.publish(request.getReplyTo(), bytes("pong:" + text(request))));
      responder.subscribe("billing.rpc");
      subscriber.flush(PATIENCE);

      publisher.publish("billing.events.created", bytes("one"));
      Headers headers = new Headers();
      headers.add("X-Trace", "abc");
      publisher.publish("billing.events.headers", headers, bytes("two"));
      for (int job = 1; job <= 4; job++) {
        publisher.publish("billing.jobs", bytes("job-" + job));
      }
      Message response = publisher.request("billing.rpc", bytes("ping"), PATIENCE);
      if (response == null) {
        throw new IllegalStateException("no response from billing.rpc in time");
      }
      System.out.println("request billing.rpc answered: " + text(response));

      publisher.publish(deniedSubject, bytes("nope"));
      publisher.flush(PATIENCE);
      String denial = asyncErrors.poll(PATIENCE.toMillis(), TimeUnit.MILLISECONDS);
      System.out.println(denial != null ? denial : "no async error for the denied publish");
      System.out.println(
          "publisher connected after the denial: "
              + (publisher.getStatus() == Connection.Status.CONNECTED));
      publisher.publish("billing.events.after", bytes("three"));
      publisher.flush(PATIENCE);

      for (int n = 0; n < 3; n++) {
        Message message = next(events);
        System.out.println(
            "received " + message.getSubject() + ": " + text(message) + headerText(message));
      }
      System.out.println(
          "queue group workers received: " + String.join(" ", queueDeliveries(workers, 4)));

      jetStream(publisher, subscriber);

      String unexpected = asyncErrors.poll();
      if (unexpected != null) {
        System.out.println("unexpected " + unexpected);
      }
    }
  }

  /** " [K=V]" for the message's headers, sorted; empty without headers. */
  private static String headerText(Message message) {
    Headers headers = message.getHeaders();
    if (headers == null || headers.isEmpty()) {
      return "";
    }
    List<String> pairs = new ArrayList<>();
    for (String key : headers.keySet()) {
      pairs.add(key + "=" + String.join(",", headers.get(key)));
    }
    Collections.sort(pairs);
    return " [" + String.join(" ", pairs) + "]";
  }

  /**
   * Collects {@code count} messages from the members of one queue group, sorted by payload (which
   * member gets which message is the server's choice): each job appears once.
   */
  private static List<String> queueDeliveries(List<Subscription> members, int count)
      throws InterruptedException {
    List<String> payloads = new ArrayList<>();
    long deadline = System.nanoTime() + PATIENCE.toNanos();
    while (payloads.size() < count && System.nanoTime() < deadline) {
      for (Subscription member : members) {
        Message message = member.nextMessage(Duration.ofMillis(10));
        if (message != null) {
          payloads.add(text(message));
        }
      }
    }
    Collections.sort(payloads);
    return payloads;
  }

  private static void jetStream(Connection publisher, Connection subscriber) throws Exception {
    JetStreamManagement management = publisher.jetStreamManagement();
    management.addStream(
        StreamConfiguration.builder().name("BILLING").subjects("billing.orders.>").build());
    for (int order = 0; order < 3; order++) {
      String subject = "billing.orders." + order;
      PublishAck ack = publisher.jetStream().publish(subject, bytes("order " + order));
      System.out.println(
          "jetstream stored " + subject + " in " + ack.getStream() + " as " + ack.getSeqno());
    }
    management.addOrUpdateConsumer(
        "BILLING",
        ConsumerConfiguration.builder().durable("audit").ackPolicy(AckPolicy.Explicit).build());

    // The subscriber acknowledges through allow_responses: each message's $JS.ACK reply subject.
    ConsumerContext audit = subscriber.getStreamContext("BILLING").getConsumerContext("audit");
    FetchConsumeOptions fetch =
        FetchConsumeOptions.builder().maxMessages(3).expiresIn(PATIENCE.toMillis()).build();
    try (FetchConsumer batch = audit.fetch(fetch)) {
      for (Message message = batch.nextMessage(); message != null; message = batch.nextMessage()) {
        message.ackSync(PATIENCE);
        System.out.println(
            "pull consumer fetched and acked " + message.getSubject() + ": " + text(message));
      }
    }
    ConsumerInfo info = management.getConsumerInfo("BILLING", "audit");
    System.out.println(
        "consumer audit: "
            + info.getDelivered().getConsumerSequence()
            + " delivered, "
            + info.getNumAckPending()
            + " awaiting an ack");
  }
}

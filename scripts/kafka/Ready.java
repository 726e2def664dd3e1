// Readiness probe for the local Kafka broker started by scripts/services.
//
// Does a real round trip, not just a port check:
//   1. AdminClient creates topic __conveyor_ready (1 partition, RF 1) if it is missing;
//   2. a KafkaProducer (acks=all) sends one record with a unique value;
//   3. a KafkaConsumer (assign + seek, no consumer group) reads that record back.
// Exit 0 on success, 1 (with a reason on stderr) otherwise.
//
// Run with the broker's jars on the classpath, as a Java 11+ single-file program:
//   java -cp "$CONVEYOR_SERVICES_DIR/kafka/libs/*" scripts/kafka/Ready.java 127.0.0.1:9092 [timeout-ms] [client.properties]
// The optional properties file (security.protocol, SASL, TLS) is applied to every client,
// for a round trip on a secured listener.

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Ready {
    static final String TOPIC = "__conveyor_ready";

    public static void main(String[] args) {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        int timeoutMs = Math.max(10_000, args.length > 1 ? Integer.parseInt(args[1]) : 20_000);
        try {
            Properties security = new Properties();
            if (args.length > 2) {
                try (java.io.FileReader reader = new java.io.FileReader(args[2])) {
                    security.load(reader);
                }
            }
            long offset = roundTrip(bootstrap, timeoutMs, security);
            System.out.println("kafka ready: round trip via " + TOPIC + " at offset " + offset + " on " + bootstrap);
            System.exit(0);
        } catch (Throwable e) {
            Throwable cause = (e instanceof ExecutionException && e.getCause() != null) ? e.getCause() : e;
            System.err.println("kafka not ready on " + bootstrap + ": " + cause);
            System.exit(1);
        }
    }

    static long roundTrip(String bootstrap, int timeoutMs, Properties security) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutMs;
        int requestTimeoutMs = Math.min(5_000, timeoutMs);

        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        common.put(AdminClientConfig.CLIENT_ID_CONFIG, "conveyor-ready");
        common.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, requestTimeoutMs);
        common.putAll(security);

        // 1. Topic.
        Properties adminProps = new Properties();
        adminProps.putAll(common);
        adminProps.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        try (Admin admin = Admin.create(adminProps)) {
            if (!admin.listTopics().names().get(remaining(deadline), TimeUnit.MILLISECONDS).contains(TOPIC)) {
                try {
                    admin.createTopics(List.of(new NewTopic(TOPIC, 1, (short) 1)))
                            .all().get(remaining(deadline), TimeUnit.MILLISECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw e;
                    }
                }
            }
        }

        // 2. Produce with acks=all.
        String value = "ready-" + UUID.randomUUID();
        RecordMetadata md;
        Properties producerProps = new Properties();
        producerProps.putAll(common);
        producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
        producerProps.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, timeoutMs);
        producerProps.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Math.max(timeoutMs, requestTimeoutMs));
        producerProps.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(producerProps)) {
            md = producer.send(new ProducerRecord<>(TOPIC, 0, "ready", value))
                    .get(remaining(deadline), TimeUnit.MILLISECONDS);
        }

        // 3. Consume it back: assign + seek, no group (so no offsets topic needed).
        TopicPartition tp = new TopicPartition(TOPIC, md.partition());
        Properties consumerProps = new Properties();
        consumerProps.putAll(common);
        consumerProps.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        consumerProps.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        consumerProps.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerProps)) {
            consumer.assign(List.of(tp));
            consumer.seek(tp, md.offset());
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(250))) {
                    if (value.equals(r.value())) {
                        return r.offset();
                    }
                }
            }
        }
        throw new IllegalStateException("produced record at offset " + md.offset() + " was not consumed back in time");
    }

    static long remaining(long deadline) {
        return Math.max(1, deadline - System.currentTimeMillis());
    }
}

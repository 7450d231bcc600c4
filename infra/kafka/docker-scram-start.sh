#!/bin/sh
# Starts the Kafka broker of docker-compose.yml and infra/k8s (the kafka-config ConfigMap in
# kafka.yaml holds the same text), in the apache/kafka image:
#   1. renders server.properties (docker-scram.properties) with the admin and controller
#      passwords read from the mounted secret files, into a memory-backed directory;
#   2. formats the storage once: a new data directory gets the cluster id and the admin's
#      SCRAM credential, a formatted one is left as it is (--ignore-formatted);
#   3. runs the broker in place of this shell.
# Expects: /etc/iotmon-kafka/{server.properties,log4j2.yaml} (read-only),
# /run/secrets/kafka/{admin,controller}, a writable /run/iotmon-kafka, KAFKA_CLUSTER_ID.
set -eu
umask 077  # the rendered files hold passwords

conf=/etc/iotmon-kafka
secrets=/run/secrets/kafka
out=/run/iotmon-kafka
cluster_id=${KAFKA_CLUSTER_ID:?KAFKA_CLUSTER_ID is not set}

# The passwords go into JAAS strings and sed expressions: generated ones
# (secrets.token_urlsafe) only, nothing that needs quoting.
password() {
  value=$(cat "$secrets/$1")
  case "$value" in
    '' | *[!A-Za-z0-9_-]*)
      echo "kafka: $secrets/$1 must hold one password of letters, digits, - and _" >&2
      exit 1
      ;;
  esac
  printf '%s' "$value"
}
admin=$(password admin)
controller=$(password controller)

sed -e "s/@ADMIN_PASSWORD@/$admin/g" -e "s/@CONTROLLER_PASSWORD@/$controller/g" \
  "$conf/server.properties" >"$out/server.properties"
# The admin's client login, for the compose healthcheck and for operators
# (kafka-topics.sh --command-config /run/iotmon-kafka/admin.properties).
cat >"$out/admin.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
EOF

# Log to stdout only (no log files in the container).
export KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$conf/log4j2.yaml"

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$cluster_id" \
  -c "$out/server.properties" --add-scram "SCRAM-SHA-512=[name=admin,password=$admin]"
exec /opt/kafka/bin/kafka-server-start.sh "$out/server.properties"

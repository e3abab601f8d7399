#!/usr/bin/env node
// Print an archadapt server's info (GetServerInfo) and gRPC health status as one JSON object.
//
// Usage: node server_info.js --server HOST:PORT [--tls-ca ca.pem] [--token-file PATH]
//
// The stubs are built at run time from the repository's .proto files by @grpc/proto-loader, so
// this script shows what any gRPC client needs: protos/archadapt/v1/archadapt.proto and
// protos/grpc/health/v1/health.proto. It exits 0 when the server returns SERVING, 1 when the
// health status is anything else or a call fails, and 2 on invalid arguments.
'use strict';

const fs = require('fs');
const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['archadapt/v1/archadapt.proto', 'grpc/health/v1/health.proto'];
const DEADLINE_MS = 30000;

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: 'string' },
      'tls-ca': { type: 'string' },
      'token-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write('usage: node server_info.js --server HOST:PORT [--tls-ca PEM] [--token-file PATH]\n');
    process.exit(0);
  }
  if (!values.server) {
    throw new Error('missing --server HOST:PORT, e.g. --server 127.0.0.1:50051');
  }
  return values;
}

function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto, e.g. checkpoint_id
    longs: String, // uint64 fields as decimal strings, since they may exceed 2**53
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return { Adaptation: loaded.archadapt.v1.Adaptation, Health: loaded.grpc.health.v1.Health };
}

function channelCredentials(options) {
  const credentials = options['tls-ca']
    ? grpc.credentials.createSsl(fs.readFileSync(options['tls-ca']))
    : grpc.credentials.createInsecure();
  if (options['token-file']) {
    const token = fs.readFileSync(options['token-file'], 'utf8').split('\n')[0].trim();
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    return { credentials, metadata };
  }
  return { credentials, metadata: new grpc.Metadata() };
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`error: ${error.message}\n`);
    return 2;
  }
  const services = loadServices();
  const { credentials, metadata } = channelCredentials(options);
  const adaptation = new services.Adaptation(options.server, credentials);
  const health = new services.Health(options.server, credentials);
  try {
    const serverInfo = await call(adaptation, 'GetServerInfo', {}, metadata);
    const status = await call(health, 'Check', { service: '' }, new grpc.Metadata());
    process.stdout.write(`${JSON.stringify({ server_info: serverInfo, health: status.status }, null, 2)}\n`);
    return status.status === 'SERVING' ? 0 : 1;
  } catch (error) {
    const code = grpc.status[error.code] || error.code;
    process.stderr.write(`error: ${code}: ${error.details || error.message}\n`);
    return 1;
  } finally {
    adaptation.close();
    health.close();
  }
}

main().then((exitCode) => {
  process.exitCode = exitCode;
});

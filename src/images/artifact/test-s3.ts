/**
 * Test helper: a real S3 wire protocol on loopback (s3rver, port 0) with one bucket, for tests of
 * `s3://` code artifacts. s3rver accepts only the key pair S3RVER/S3RVER.
 */
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { S3Config } from './fetch.ts';

// s3rver ships no types; this is the part of its API the tests use.
interface S3rverInstance { run(): Promise<AddressInfo>; close(): Promise<void> }
type S3rverConstructor = new (options: Record<string, unknown>) => S3rverInstance;
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor;

export interface TestS3 {
  config: S3Config;
  put(bucket: string, key: string, body: Buffer): Promise<void>;
  close(): Promise<void>;
}

export async function startTestS3(dir: string, buckets: string[]): Promise<TestS3> {
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: path.join(dir, 's3rver') });
  const { port } = await server.run();
  const config: S3Config = {
    endpoint: `http://127.0.0.1:${port}`, region: 'us-east-1', forcePathStyle: true,
    accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER',
  };
  const client = new S3Client({
    endpoint: config.endpoint, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  for (const bucket of buckets) await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return {
    config,
    put: async (bucket, key, body) => { await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body })); },
    close: async () => { client.destroy(); await server.close(); },
  };
}

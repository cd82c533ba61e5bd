/**
 * The SDK's hand-written types against the server's schemas, checked by the compiler (`tsc
 * --noEmit`): a field added, removed or retyped on either side fails the type check.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AuthTokenKeyRotationView, AuthTokenView, CreateAuthTokenBody, ImageView, MicroVmView, RunMicroVmBody } from '../api/schemas.ts';
import type { AuthTokenKeyRotation, CreateMicroVmAuthTokenRequest, Image, MicroVm, MicroVmAuthToken, RunMicroVmRequest } from './types.ts';

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const imageMatches: Same<Image, ImageView> = true;
const microvmMatches: Same<MicroVm, MicroVmView> = true;
const runRequestMatches: Same<RunMicroVmRequest, RunMicroVmBody> = true;
const authTokenRequestMatches: Same<CreateMicroVmAuthTokenRequest, CreateAuthTokenBody> = true;
const authTokenMatches: Same<MicroVmAuthToken, AuthTokenView> = true;
const rotationMatches: Same<AuthTokenKeyRotation, AuthTokenKeyRotationView> = true;

test('the SDK types are the server views and request bodies', () => {
  assert.deepEqual([imageMatches, microvmMatches, runRequestMatches, authTokenRequestMatches, authTokenMatches, rotationMatches], [true, true, true, true, true, true]);
});

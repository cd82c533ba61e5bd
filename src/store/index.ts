export { openStore, type Store } from './store.ts';
export { migrations } from './migrations.ts';
export { ACCOUNT_NAME, ADMIN_ACCOUNT, type Account, type AccountRepository, type ApiKeyInfo } from './accounts.ts';
export { imageArn, type ImageDeletion, type ImageRepository, type NewImageFields, type StoredImage } from './images.ts';
export {
  FINAL_STATES,
  MICROVM_STATES,
  type IdlePolicy,
  type MicroVmFilter,
  type MicroVmPatch,
  type MicroVmPatchInput,
  type MicroVmRecord,
  type MicroVmRepository,
  type MicroVmState,
  type MicroVmUsage,
  ZERO_USAGE,
} from './microvms.ts';

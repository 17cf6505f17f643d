import { initBackend } from '../../core/backend.js';

/** Every test file runs on the backend the app would pick here (LOCALMIM_BACKEND may force one). */
export const backend = await initBackend();

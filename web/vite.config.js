import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// Built into the Python package (corral/web/static), committed, so neither CI nor users need npm.
export default defineConfig({
  plugins: [svelte()],
  base: '/',
  build: {
    outDir: '../corral/web/static',
    emptyOutDir: true,
    target: 'es2022', // noVNC uses top-level await
    chunkSizeWarningLimit: 1200,
  },
  server: { proxy: { '/v1': { target: 'http://127.0.0.1:8765', ws: true } } },
});

// The console is served by `sipbridge serve` at /console; the build goes where the server
// looks for it (src/sipbridge/server/console_web.py, CONSOLE_DIST), which git ignores.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  build: {
    outDir: '../src/sipbridge/server/console_dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 1000,
  },
});

// Copy the third-party assets the page uses from node_modules into the Python package.
// Run `npm ci && npm run build` here after changing a version in package.json; commit the copied files.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "txwatch", "web", "static", "vendor");
mkdirSync(out, { recursive: true });
const files = [
  ["uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uPlot.min.css"],
  ["uplot/LICENSE", "uPlot.LICENSE.txt"],
];
for (const [src, dst] of files) {
  copyFileSync(join(here, "node_modules", src), join(out, dst));
  console.log(`copied ${src} -> txwatch/web/static/vendor/${dst}`);
}

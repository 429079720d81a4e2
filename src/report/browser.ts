/**
 * Opening a report in headless Chromium (Debian's `chromium`, driven by playwright-core): what
 * the report test checks, and `dpzo report --png` uses for a screenshot.
 */
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS } from "./screenshot.ts";

export { CHROMIUM } from "./screenshot.ts";

export interface PageCheck {
  /** console errors, page errors, and requests that left file:// (the page must need none). */
  errors: string[];
  requests: string[];
  svgs: number;
  /** <path> elements with a non-empty `d` and a non-empty rendered box. */
  paths: number;
  charts: { id: string; paths: number; width: number; height: number }[];
  privacyStatement: string;
}

const INSPECT = `(() => {
  const ok = (p) => {
    const d = p.getAttribute("d") || "";
    const b = p.getBoundingClientRect();
    return d.length > 2 && (b.width > 0 || b.height > 0);
  };
  return {
    svgs: document.querySelectorAll("svg").length,
    paths: [...document.querySelectorAll("svg path")].filter(ok).length,
    charts: [...document.querySelectorAll("figure")].map((f) => {
      const svg = f.querySelector("svg");
      const b = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
      return {
        id: f.id,
        paths: [...f.querySelectorAll("svg path")].filter(ok).length,
        width: b.width,
        height: b.height,
      };
    }),
    privacyStatement: (document.getElementById("privacy-statement") || {}).textContent || "",
  };
})()`;

/** Loads `htmlFile` in headless Chromium; optionally saves a full-page PNG. */
export async function openInChromium(htmlFile: string, png?: string): Promise<PageCheck> {
  try {
    Deno.statSync(CHROMIUM);
  } catch {
    throw new Error(
      `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) or set DPZO_CHROMIUM`,
    );
  }
  // playwright gives the browser a fresh temporary profile (--user-data-dir) and removes it.
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1240, height: 900 } });
    const errors: string[] = [], requests: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
    page.on("request", (r) => {
      if (!r.url().startsWith("file://")) requests.push(r.url());
    });
    const url = new URL(`file://${await Deno.realPath(htmlFile)}`).href;
    await page.goto(url, { waitUntil: "load" });
    // A string, so that this module type-checks without the DOM library.
    const result = await page.evaluate(INSPECT) as Omit<PageCheck, "errors" | "requests">;
    if (png) await page.screenshot({ path: png, fullPage: true });
    return { errors, requests, ...result };
  } finally {
    await browser.close();
  }
}

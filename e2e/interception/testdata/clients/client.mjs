// One GET with a Node HTTP client, no proxy setting:
// node client.mjs KIND URL prints "STATUS X-MINIMESH-ERROR" ("-" when
// absent). KIND: fetch, http.get.
import http from "node:http";

const [kind, url] = process.argv.slice(2);
const show = (status, err) => console.log(`${status} ${err || "-"}`);

if (kind === "fetch") {
  const r = await fetch(url);
  await r.arrayBuffer();
  show(r.status, r.headers.get("x-minimesh-error"));
} else if (kind === "http.get") {
  await new Promise((resolve, reject) => {
    http.get(url, (r) => {
      r.resume();
      r.on("end", () => {
        show(r.statusCode, r.headers["x-minimesh-error"]);
        resolve();
      });
    }).on("error", reject);
  });
} else {
  console.error(`unknown kind ${kind}`);
  process.exit(2);
}

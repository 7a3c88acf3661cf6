// Validates an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node validate_asyncapi.cjs FILE   (NODE_PATH points at the parser's node_modules)
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");

(async () => {
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(process.argv[2], "utf8"));
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code} ${d.path.join(".")}: ${d.message}`);
  }
  if (!document || errors.length) process.exit(1);
  console.log(`valid: ${document.channels().length} channels, ${document.operations().length} operations`);
})().catch((e) => { console.error(e); process.exit(2); });

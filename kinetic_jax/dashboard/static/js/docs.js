// The API reference (/docs): the server's OpenAPI document as plain HTML,
// built with text nodes only (no markup from the document is interpreted).
const el = (tag, cls, ...children) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};
const json = (x) => el("pre", "schema", JSON.stringify(x, null, 2));

function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const parts = schema.$ref.replace(/^#\//, "").split("/");
    return parts.reduce((o, k) => (o ? o[k] : undefined), spec) || schema;
  }
  return schema;
}

function operation(spec, path, method, op) {
  const box = el("section", "panel op", el("h3", null, el("code", "method " + method, method.toUpperCase()), " ", el("code", null, path)));
  if (op.summary) box.append(el("p", "summary", op.summary));
  if (op.description) box.append(el("pre", "description", op.description));
  const params = op.parameters || [];
  if (params.length) {
    const table = el("table", null, el("tr", null, el("th", null, "parameter"), el("th", null, "in"), el("th", null, "schema"), el("th", null, "description")));
    for (const p of params) {
      table.append(el("tr", null, el("td", null, el("code", null, p.name)), el("td", null, p.in),
        el("td", null, el("code", null, JSON.stringify(resolve(spec, p.schema) || {}))), el("td", null, p.description || "")));
    }
    box.append(table);
  }
  const body = op.requestBody && op.requestBody.content;
  if (body) {
    for (const [type, content] of Object.entries(body)) {
      const d = el("details", null, el("summary", null, `request body: ${type}`));
      if (content.schema) d.append(json(resolve(spec, content.schema)));
      if (content.example) d.append(el("p", null, "example:"), json(content.example));
      box.append(d);
    }
  }
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
  if (codes.length) box.append(el("p", "hint", "responses: " + codes.join(" · ")));
  return box;
}

async function main() {
  const root = document.getElementById("api");
  let spec;
  try { spec = await (await fetch("/openapi.json")).json(); }
  catch (e) { root.replaceChildren(el("p", null, "The server cannot be reached: /openapi.json did not load.")); return; }
  root.replaceChildren(el("h2", null, `${spec.info.title} ${spec.info.version}`), el("p", null, spec.info.description || ""));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) root.append(operation(spec, path, method, op));
  }
}
main();

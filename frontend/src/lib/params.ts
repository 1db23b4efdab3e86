// The new-job form is driven by each backend's JSON Schema of hyperparameters
// (GET /api/v1/backends). This turns a schema into form fields, and the user's text back
// into values; the server validates again and its 422 names the field.
//
// The form keeps one text per input, keyed by its path: "max_steps", and for the fields of
// a block such as LoRA, "lora" (the block is on: "on") and "lora.rank".

// list: one of a few constants or a list of names ("all-linear" or "q_proj, v_proj");
// group: an object of its own fields (LoRA, rollout).
export type FieldKind = "integer" | "number" | "string" | "boolean" | "enum" | "list" | "group" | "json";

export interface ParamField {
  name: string;
  title: string;
  description: string;
  kind: FieldKind;
  nullable: boolean;
  /** The server refuses the block without it (no default). */
  required: boolean;
  default: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  /** The choices as the select shows them (enum, boolean), or a list's constants. */
  options?: string[];
  /** The value each option sends, in the order of options. */
  values?: unknown[];
  /** Each name of a list must match it. */
  pattern?: string;
  /** A group's own fields. */
  fields?: ParamField[];
}

type Schema = Record<string, unknown>;
interface Shape {
  kind: FieldKind;
  nullable: boolean;
  leaf: Schema;
  values?: unknown[];
  item?: Schema;
}

// pydantic writes a nested model as {"$ref": "#/$defs/Name"}, alone or inside anyOf.
function resolve(schema: Schema, root: Schema): Schema {
  const ref = schema.$ref;
  if (typeof ref !== "string" || !ref.startsWith("#/$defs/")) return schema;
  const target = ((root.$defs ?? {}) as Record<string, Schema>)[ref.slice("#/$defs/".length)];
  return target ? { ...target, ...schema, $ref: undefined } : schema;
}

/** The constants a schema allows, when it allows nothing else (enum, const, a one-value type). */
function constantsOf(schema: Schema): unknown[] | undefined {
  if (Array.isArray(schema.enum)) return schema.enum as unknown[];
  if ("const" in schema) return [schema.const];
  if (schema.type === "boolean") return [true, false];
  return undefined;
}

function shapeOf(raw: Schema, root: Schema): Shape {
  const schema = resolve(raw, root);
  let parts = schema.anyOf ?? schema.oneOf;
  // {"type": ["string", "null"]} is the same as anyOf of the two.
  if (!parts && Array.isArray(schema.type)) parts = (schema.type as string[]).map((type) => ({ ...schema, type }));
  if (Array.isArray(parts)) {
    const concrete = (parts as Schema[]).map((s) => resolve(s, root)).filter((s) => s.type !== "null");
    const nullable = concrete.length < parts.length;
    if (concrete.length === 1) return { ...shapeOf(concrete[0], root), nullable };
    const constants = concrete.map(constantsOf);
    if (constants.every((c) => c !== undefined)) {
      return { kind: "enum", nullable, leaf: schema, values: constants.flat() };
    }
    const arrays = concrete.filter((s) => s.type === "array");
    const items = arrays.length === 1 ? resolve((arrays[0].items ?? {}) as Schema, root) : undefined;
    const others = concrete.filter((s) => s.type !== "array");
    if (items?.type === "string" && others.every((s) => constantsOf(s) !== undefined)) {
      return { kind: "list", nullable, leaf: schema, values: others.flatMap((s) => constantsOf(s) ?? []), item: items };
    }
    return { kind: "json", nullable, leaf: schema };
  }
  if (schema.type === "boolean") return { kind: "boolean", nullable: false, leaf: schema, values: [true, false] };
  const constants = constantsOf(schema);
  if (constants) return { kind: "enum", nullable: false, leaf: schema, values: constants };
  switch (schema.type) {
    case "integer":
    case "number":
    case "string":
      return { kind: schema.type, nullable: false, leaf: schema };
    case "array": {
      const item = resolve((schema.items ?? {}) as Schema, root);
      return item.type === "string"
        ? { kind: "list", nullable: false, leaf: schema, values: [], item }
        : { kind: "json", nullable: false, leaf: schema };
    }
    case "object":
    case undefined:
      if (schema.properties) return { kind: "group", nullable: false, leaf: schema };
      return { kind: "json", nullable: false, leaf: schema };
    default:
      return { kind: "json", nullable: false, leaf: schema };
  }
}

function fieldOf(name: string, property: Schema, required: boolean, root: Schema, nested: boolean): ParamField {
  const shape = shapeOf(property, root);
  // A group inside a group is sent as JSON: two levels are all a form shows well.
  const kind = shape.kind === "group" && nested ? "json" : shape.kind;
  const resolved = resolve(property, root);
  const field: ParamField = {
    name,
    title: String(property.title ?? resolved.title ?? name),
    description: String(property.description ?? resolved.description ?? ""),
    kind,
    nullable: shape.nullable,
    required,
    default: property.default,
  };
  for (const limit of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const) {
    if (typeof shape.leaf[limit] === "number") field[limit] = shape.leaf[limit] as number;
  }
  if (shape.values) {
    field.values = shape.values;
    field.options = shape.values.map(String);
  }
  if (shape.item && typeof shape.item.pattern === "string") field.pattern = shape.item.pattern;
  if (kind === "group") field.fields = fieldsOf(shape.leaf, root, true);
  return field;
}

/** The form fields of a JSON Schema object (its $defs resolve nested models). */
export function fieldsOf(schema: Schema | null | undefined, root?: Schema, nested = false): ParamField[] {
  const properties = (schema?.properties ?? {}) as Record<string, Schema>;
  const required = new Set((schema?.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) =>
    fieldOf(name, property, required.has(name), root ?? schema ?? {}, nested),
  );
}

/** "1 ≤ x ≤ 10", "> 0", … for the hint under a field. */
export function limitsText(field: ParamField): string {
  const parts: string[] = [];
  if (field.minimum !== undefined) parts.push(`≥ ${field.minimum}`);
  if (field.exclusiveMinimum !== undefined) parts.push(`> ${field.exclusiveMinimum}`);
  if (field.maximum !== undefined) parts.push(`≤ ${field.maximum}`);
  if (field.exclusiveMaximum !== undefined) parts.push(`< ${field.exclusiveMaximum}`);
  return parts.join(", ");
}

export function defaultText(field: ParamField): string {
  if (field.default === undefined) return "required";
  if (field.default === null) return field.kind === "group" ? "off" : "not set";
  if (Array.isArray(field.default) && field.kind === "list") return field.default.join(", ");
  return typeof field.default === "string" ? field.default : JSON.stringify(field.default);
}

/** The value to send for the user's text, `undefined` to leave the default, or an error. */
export function parseValue(field: ParamField, text: string): { value?: unknown; error?: string } {
  const raw = text.trim();
  if (raw === "") return {};
  switch (field.kind) {
    case "integer":
    case "number": {
      const value = Number(raw);
      if (!Number.isFinite(value)) return { error: "not a number" };
      if (field.kind === "integer" && !Number.isInteger(value)) return { error: "must be a whole number" };
      if (field.minimum !== undefined && value < field.minimum) return { error: `must be ≥ ${field.minimum}` };
      if (field.maximum !== undefined && value > field.maximum) return { error: `must be ≤ ${field.maximum}` };
      if (field.exclusiveMinimum !== undefined && value <= field.exclusiveMinimum)
        return { error: `must be > ${field.exclusiveMinimum}` };
      if (field.exclusiveMaximum !== undefined && value >= field.exclusiveMaximum)
        return { error: `must be < ${field.exclusiveMaximum}` };
      return { value };
    }
    case "boolean":
    case "enum": {
      const index = field.options?.indexOf(raw) ?? -1;
      if (index < 0) return { error: `one of ${field.options?.join(", ")}` };
      return { value: field.values?.[index] ?? raw };
    }
    case "list": {
      const index = field.options?.indexOf(raw) ?? -1;
      if (index >= 0) return { value: field.values?.[index] };
      const names = raw.split(/[\s,]+/).filter(Boolean);
      const pattern = field.pattern ? new RegExp(field.pattern) : null;
      const bad = names.find((n) => pattern && !pattern.test(n));
      if (bad !== undefined) {
        const constants = field.options?.length ? `${field.options.join(", ")} or ` : "";
        return { error: `${constants}names separated by commas (${JSON.stringify(bad)} is not a name)` };
      }
      return { value: names };
    }
    case "string":
      return { value: raw };
    case "group":
      return {}; // its fields are read by collectValues
    case "json":
      try {
        return { value: JSON.parse(raw) };
      } catch {
        return { error: "not valid JSON" };
      }
  }
}

/** A group that is nullable is sent only while it is on; the others always may be. */
export function groupIsOn(field: ParamField, texts: Record<string, string>): boolean {
  return !field.nullable || texts[field.name] === "on";
}

/** The values to send for the texts of these fields, and the errors by path ("lora.rank"). */
export function collectValues(
  fields: ParamField[],
  texts: Record<string, string>,
): { values: Record<string, unknown>; errors: Record<string, string> } {
  const values: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const field of fields) {
    if (field.kind !== "group") {
      const result = parseValue(field, texts[field.name] ?? "");
      if (result.error) errors[field.name] = result.error;
      else if (result.value !== undefined) values[field.name] = result.value;
      continue;
    }
    if (!groupIsOn(field, texts)) continue;
    const inner: Record<string, unknown> = {};
    for (const sub of field.fields ?? []) {
      const path = `${field.name}.${sub.name}`;
      const result = parseValue(sub, texts[path] ?? "");
      if (result.error) errors[path] = result.error;
      else if (result.value !== undefined) inner[sub.name] = result.value;
      else if (sub.required) errors[path] = "required";
    }
    // On with every field at its default still sends the block: {} turns LoRA on.
    if (field.nullable || Object.keys(inner).length) values[field.name] = inner;
  }
  return { values, errors };
}

/** Text for a value (prefilling a clone). */
export function valueText(field: ParamField, value: unknown): string {
  if (value === undefined || value === null) return "";
  if (field.kind === "json") return JSON.stringify(value);
  if (field.kind === "list" && Array.isArray(value)) return value.join(", ");
  return String(value);
}

/** The texts that show these values (a clone, an applied recommendation): path -> text. */
export function textsOf(fields: ParamField[], values: Record<string, unknown>): Record<string, string> {
  const texts: Record<string, string> = {};
  for (const field of fields) {
    if (!(field.name in values)) continue;
    const value = values[field.name];
    if (field.kind !== "group") {
      texts[field.name] = valueText(field, value);
      continue;
    }
    if (value === null || typeof value !== "object") {
      if (field.nullable) texts[field.name] = "";
      continue;
    }
    if (field.nullable) texts[field.name] = "on";
    for (const sub of field.fields ?? []) {
      const inner = (value as Record<string, unknown>)[sub.name];
      if (inner !== undefined) texts[`${field.name}.${sub.name}`] = valueText(sub, inner);
    }
  }
  return texts;
}

/** Every input's path, so that each has a text ("" for the default) from the start. */
export function pathsOf(fields: ParamField[]): string[] {
  return fields.flatMap((f) =>
    f.kind === "group" ? [...(f.nullable ? [f.name] : []), ...(f.fields ?? []).map((s) => `${f.name}.${s.name}`)] : [f.name],
  );
}

/** The path a server error's location names, among the form's paths (the longest known). */
export function errorPath(loc: (string | number)[], paths: string[]): string {
  const parts = loc.map(String);
  for (let n = parts.length; n > 0; n--) {
    const path = parts.slice(0, n).join(".");
    if (paths.includes(path)) return path;
  }
  return parts[0] ?? "";
}

// The new-job form is driven by each backend's JSON Schema of hyperparameters
// (GET /api/v1/backends). This turns a schema into form fields, and the user's text back
// into values; the server validates again and its 422 names the field.

export type FieldKind = "integer" | "number" | "string" | "boolean" | "enum" | "json";

export interface ParamField {
  name: string;
  title: string;
  description: string;
  kind: FieldKind;
  nullable: boolean;
  default: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  options?: string[];
}

type Schema = Record<string, unknown>;

function kindOf(schema: Schema): { kind: FieldKind; nullable: boolean; leaf: Schema } {
  const anyOf = schema.anyOf as Schema[] | undefined;
  if (anyOf) {
    const concrete = anyOf.filter((s) => s.type !== "null");
    const nullable = concrete.length < anyOf.length;
    if (concrete.length === 1) return { ...kindOf(concrete[0]), nullable };
    return { kind: "json", nullable, leaf: schema };
  }
  if (Array.isArray(schema.enum)) return { kind: "enum", nullable: false, leaf: schema };
  switch (schema.type) {
    case "integer":
      return { kind: "integer", nullable: false, leaf: schema };
    case "number":
      return { kind: "number", nullable: false, leaf: schema };
    case "boolean":
      return { kind: "boolean", nullable: false, leaf: schema };
    case "string":
      return { kind: "string", nullable: false, leaf: schema };
    default:
      return { kind: "json", nullable: false, leaf: schema };
  }
}

export function fieldsOf(schema: Schema | null | undefined): ParamField[] {
  const properties = (schema?.properties ?? {}) as Record<string, Schema>;
  return Object.entries(properties).map(([name, property]) => {
    const { kind, nullable, leaf } = kindOf(property);
    const field: ParamField = {
      name,
      title: String(property.title ?? name),
      description: String(property.description ?? ""),
      kind,
      nullable,
      default: property.default,
    };
    for (const limit of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const) {
      if (typeof leaf[limit] === "number") field[limit] = leaf[limit] as number;
    }
    if (kind === "enum") field.options = (leaf.enum as unknown[]).map(String);
    return field;
  });
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
  if (field.default === null) return "not set";
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
      if (raw === "true" || raw === "false") return { value: raw === "true" };
      return { error: "true or false" };
    case "enum":
      return field.options?.includes(raw) ? { value: raw } : { error: `one of ${field.options?.join(", ")}` };
    case "string":
      return { value: raw };
    case "json":
      try {
        return { value: JSON.parse(raw) };
      } catch {
        return { error: "not valid JSON" };
      }
  }
}

/** Text for a value (prefilling a clone). */
export function valueText(field: ParamField, value: unknown): string {
  if (value === undefined || value === null) return "";
  if (field.kind === "json") return JSON.stringify(value);
  return String(value);
}

import { describe, expect, it } from "vitest";
import { collectValues, defaultText, errorPath, fieldsOf, limitsText, parseValue, pathsOf, textsOf } from "@/lib/params";

// The shape GET /api/v1/backends gives (pydantic's JSON Schema), trimmed to a few fields.
const schema = {
  properties: {
    max_steps: { anyOf: [{ maximum: 10000000, minimum: 1, type: "integer" }, { type: "null" }], default: null, description: "Optimizer steps." },
    learning_rate: { default: 2e-5, exclusiveMinimum: 0, maximum: 1, type: "number", description: "Peak learning rate." },
    lr_scheduler_type: { default: "linear", enum: ["linear", "cosine"], type: "string" },
    gradient_checkpointing: { default: false, type: "boolean" },
    assistant_only_loss: { default: true, type: "boolean", title: "Assistant Only Loss" },
    dtype: { anyOf: [{ enum: ["float32", "bfloat16"], type: "string" }, { type: "null" }], default: null },
    mode: { anyOf: [{ const: "fast" }, { const: "exact" }, { const: 3 }], default: "fast" },
    lora: { anyOf: [{ $ref: "#/$defs/LoraParameters" }, { type: "null" }], default: null, description: "LoRA; absent: full training." },
    config: { anyOf: [{ type: "object" }, { type: "integer" }], default: null },
  },
  $defs: {
    LoraParameters: {
      additionalProperties: false,
      properties: {
        rank: { default: 8, maximum: 1024, minimum: 1, type: "integer" },
        alpha: { default: 16, maximum: 4096, minimum: 1, type: "integer" },
        dropout: { default: 0.05, exclusiveMaximum: 1, minimum: 0, type: "number" },
        target_modules: {
          anyOf: [{ const: "all-linear", type: "string" }, { items: { pattern: "^[A-Za-z_][A-Za-z0-9_.]{0,99}$", type: "string" }, minItems: 1, type: "array" }],
          default: "all-linear",
        },
      },
      type: "object",
    },
  },
};
// verl's LoRA: the rank has no default.
const verlLora = {
  properties: { lora: { anyOf: [{ $ref: "#/$defs/LoraOptions" }, { type: "null" }], default: null } },
  $defs: { LoraOptions: { properties: { rank: { minimum: 1, type: "integer" }, alpha: { default: 16, type: "integer" } }, required: ["rank"], type: "object" } },
};

describe("parameters from a backend's JSON Schema", () => {
  const fields = Object.fromEntries(fieldsOf(schema).map((f) => [f.name, f]));

  it("knows each field's kind, limits and default", () => {
    expect(fields.max_steps).toMatchObject({ kind: "integer", nullable: true, minimum: 1, maximum: 10000000 });
    expect(limitsText(fields.learning_rate)).toBe("> 0, ≤ 1");
    expect(fields.lr_scheduler_type.options).toEqual(["linear", "cosine"]);
    expect(fields.lora.kind).toBe("group");
    expect(defaultText(fields.max_steps)).toBe("not set");
    expect(defaultText(fields.learning_rate)).toBe("0.00002");
  });

  it("leaves empty fields to the server's default and checks limits before sending", () => {
    expect(parseValue(fields.max_steps, " ")).toEqual({});
    expect(parseValue(fields.max_steps, "40")).toEqual({ value: 40 });
    expect(parseValue(fields.max_steps, "2.5").error).toMatch(/whole number/);
    expect(parseValue(fields.max_steps, "0").error).toMatch(/≥ 1/);
    expect(parseValue(fields.learning_rate, "0").error).toMatch(/> 0/);
    expect(parseValue(fields.learning_rate, "1e-3")).toEqual({ value: 0.001 });
    expect(parseValue(fields.lr_scheduler_type, "exotic").error).toMatch(/one of/);
    expect(parseValue(fields.gradient_checkpointing, "true")).toEqual({ value: true });
    expect(parseValue(fields.config, '{"rank": 4}')).toEqual({ value: { rank: 4 } });
    expect(parseValue(fields.config, "{rank").error).toMatch(/JSON/);
  });

  it("gives every choice field its options, whatever the schema writes (enum, const, boolean, anyOf with null)", () => {
    expect(fields.lr_scheduler_type).toMatchObject({ kind: "enum", options: ["linear", "cosine"] });
    expect(fields.assistant_only_loss).toMatchObject({ kind: "boolean", options: ["true", "false"] });
    expect(fields.dtype).toMatchObject({ kind: "enum", nullable: true, options: ["float32", "bfloat16"] });
    expect(fields.mode).toMatchObject({ kind: "enum", options: ["fast", "exact", "3"] });
    // The value sent has the schema's type, not the option's text.
    expect(parseValue(fields.assistant_only_loss, "false")).toEqual({ value: false });
    expect(parseValue(fields.mode, "3")).toEqual({ value: 3 });
    expect(parseValue(fields.dtype, "bfloat16")).toEqual({ value: "bfloat16" });
    for (const field of fieldsOf(schema)) {
      if (field.kind === "enum" || field.kind === "boolean") expect(field.options?.length, field.name).toBeGreaterThan(0);
    }
  });

  it("turns a nested model such as LoRA into fields of its own, sent only while it is on", () => {
    const lora = fields.lora;
    expect(lora.fields?.map((f) => [f.name, f.kind])).toEqual([
      ["rank", "integer"], ["alpha", "integer"], ["dropout", "number"], ["target_modules", "list"],
    ]);
    expect(pathsOf([lora])).toEqual(["lora", "lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules"]);
    expect(defaultText(lora)).toBe("off");

    const all = fieldsOf(schema);
    expect(collectValues(all, { "lora.rank": "8" })).toEqual({ values: {}, errors: {} }); // off
    expect(collectValues(all, { lora: "on" }).values).toEqual({ lora: {} }); // on, every default
    expect(collectValues(all, { lora: "on", "lora.rank": "8", "lora.target_modules": "q_proj, v_proj" }).values).toEqual({
      lora: { rank: 8, target_modules: ["q_proj", "v_proj"] },
    });
    expect(collectValues(all, { lora: "on", "lora.target_modules": "all-linear" }).values).toEqual({ lora: { target_modules: "all-linear" } });
    expect(collectValues(all, { lora: "on", "lora.rank": "0", "lora.target_modules": "q-proj" }).errors).toEqual({
      "lora.rank": "must be ≥ 1",
      "lora.target_modules": 'all-linear or names separated by commas ("q-proj" is not a name)',
    });
    const verl = fieldsOf(verlLora);
    expect(collectValues(verl, { lora: "on" }).errors).toEqual({ "lora.rank": "required" });
    expect(collectValues(verl, { lora: "on", "lora.rank": "16" }).values).toEqual({ lora: { rank: 16 } });

    // A clone shows a job's LoRA in these fields, and a server error finds its field.
    expect(textsOf(all, { lora: { rank: 4, target_modules: ["q_proj"] } })).toEqual({
      lora: "on", "lora.rank": "4", "lora.target_modules": "q_proj",
    });
    expect(errorPath(["lora", "rank"], pathsOf(all))).toBe("lora.rank");
    expect(errorPath(["lora", "target_modules", "list[str]", 0], pathsOf(all))).toBe("lora.target_modules");
    expect(errorPath(["max_steps"], pathsOf(all))).toBe("max_steps");
  });
});

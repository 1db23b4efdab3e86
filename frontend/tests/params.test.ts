import { describe, expect, it } from "vitest";
import { defaultText, fieldsOf, limitsText, parseValue } from "@/lib/params";

// The shape GET /api/v1/backends gives (pydantic's JSON Schema), trimmed to a few fields.
const schema = {
  properties: {
    max_steps: { anyOf: [{ maximum: 10000000, minimum: 1, type: "integer" }, { type: "null" }], default: null, description: "Optimizer steps." },
    learning_rate: { default: 2e-5, exclusiveMinimum: 0, maximum: 1, type: "number", description: "Peak learning rate." },
    lr_scheduler_type: { default: "linear", enum: ["linear", "cosine"], type: "string" },
    gradient_checkpointing: { default: false, type: "boolean" },
    lora: { anyOf: [{ $ref: "#/$defs/LoraParameters" }, { type: "null" }], default: null },
  },
};

describe("parameters from a backend's JSON Schema", () => {
  const fields = Object.fromEntries(fieldsOf(schema).map((f) => [f.name, f]));

  it("knows each field's kind, limits and default", () => {
    expect(fields.max_steps).toMatchObject({ kind: "integer", nullable: true, minimum: 1, maximum: 10000000 });
    expect(limitsText(fields.learning_rate)).toBe("> 0, ≤ 1");
    expect(fields.lr_scheduler_type.options).toEqual(["linear", "cosine"]);
    expect(fields.lora.kind).toBe("json");
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
    expect(parseValue(fields.lora, '{"rank": 4}')).toEqual({ value: { rank: 4 } });
    expect(parseValue(fields.lora, "{rank").error).toMatch(/JSON/);
  });
});

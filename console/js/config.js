// config.json sits next to the page: the API's base URL and how to sign in (see README.md).

export class ConfigError extends Error {}

export async function loadConfig() {
  let response;
  try {
    response = await fetch(new URL("config.json", document.baseURI), { cache: "no-store" });
  } catch {
    throw new ConfigError("The console could not load its configuration (config.json).");
  }
  if (!response.ok) {
    throw new ConfigError(`The console's configuration (config.json) is missing (${response.status}).`);
  }
  const config = await response.json().catch(() => null);
  if (!config || typeof config !== "object" || !config.auth?.mode) {
    throw new ConfigError("The console's configuration (config.json) is invalid.");
  }
  return {
    apiBaseUrl: String(config.apiBaseUrl ?? ""),
    auth: config.auth,
    // The money a quota balance is worth is shown in this unit (1 unit = quota_per_unit).
    unitSymbol: String(config.unitSymbol ?? "$"),
  };
}

-- Runs the StorageGrant health script against sample objects and compares the result with the
-- expected health. test.sh writes both input files.
--
-- Usage: lua5.4 harness.lua HEALTH_SCRIPT CASES
-- CASES is a Lua chunk that returns a list of {name, obj, status, message} tables.
--
-- As in Argo CD, the script can use only the base functions, the table library, os.time,
-- os.date and the global obj. Lua 5.4 still lets a script call string methods such as
-- s:sub(), which Argo CD's gopher-lua rejects, so this harness cannot catch that mistake.
local script_path, cases_path = arg[1], arg[2]

local function read(path)
  local file = assert(io.open(path, "r"))
  local text = file:read("a")
  file:close()
  return text
end

local function sandbox(obj)
  return {
    obj = obj,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
    table = table,
    os = { time = os.time, date = os.date },
  }
end

local source = read(script_path)
local cases = assert(load(read(cases_path), "cases", "t", {}))()
local passed, failed = 0, 0

for _, case in ipairs(cases) do
  local chunk, load_error = load(source, "health.lua", "t", sandbox(case.obj))
  local ok, result = false, load_error
  if chunk ~= nil then
    ok, result = pcall(chunk)
  end
  if not ok then
    failed = failed + 1
    print(("FAIL %s: the script raised an error: %s"):format(case.name, tostring(result)))
  elseif type(result) ~= "table" then
    failed = failed + 1
    print(("FAIL %s: the script returned %s, expected a table"):format(case.name, type(result)))
  elseif result.status ~= case.status or result.message ~= case.message then
    failed = failed + 1
    print(("FAIL %s\n  expected: %s: %s\n  actual:   %s: %s"):format(
      case.name, case.status, case.message, tostring(result.status), tostring(result.message)))
  else
    passed = passed + 1
    print(("ok   %s: %s"):format(case.name, result.status))
  end
end

print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)

-- The hand-written part of the jProxy dissector: the interpreter of the packet programs that
-- `gjproxy dissector` derives from schemas/ (in the SCHEMA table above), stream reassembly,
-- the key log, and AES-128 (ECB, GCM) in pure Lua 5.2 (bit32), as Wireshark 4.0's Lua API
-- has no AES.

local DECODERS
local band, bxor, bor = bit32.band, bit32.bxor, bit32.bor
local lshift, rshift, btest = bit32.lshift, bit32.rshift, bit32.btest
local byte, char, concat = string.byte, string.char, table.concat
local unpack = table.unpack or unpack

-- ---- AES-128 -------------------------------------------------------------------------------

local SBOX, INV_SBOX = {}, {}
local function xtime(a)
  a = lshift(a, 1)
  if a >= 256 then a = bxor(a, 0x11b) end
  return a
end
local function gmul(a, b)
  local product = 0
  while b > 0 do
    if btest(b, 1) then product = bxor(product, a) end
    a = xtime(a)
    b = rshift(b, 1)
  end
  return product
end
do
  -- The S-box from its definition: the inverse in GF(2^8), then the affine map.
  local inverse = { [0] = 0 }
  for a = 1, 255 do
    for b = 1, 255 do
      if gmul(a, b) == 1 then inverse[a] = b break end
    end
  end
  for a = 0, 255 do
    local x, s = inverse[a], inverse[a]
    for _ = 1, 4 do
      x = band(bor(lshift(x, 1), rshift(x, 7)), 0xff)
      s = bxor(s, x)
    end
    s = bxor(s, 0x63)
    SBOX[a], INV_SBOX[s] = s, a
  end
end
local MUL = {}
for _, factor in ipairs({ 2, 3, 9, 11, 13, 14 }) do
  local row = {}
  for a = 0, 255 do row[a] = gmul(a, factor) end
  MUL[factor] = row
end
local M2, M3, M9, M11, M13, M14 = MUL[2], MUL[3], MUL[9], MUL[11], MUL[13], MUL[14]

-- Round keys: 176 bytes, 1-based like the state arrays.
local function expand_key(key)
  local w = { byte(key, 1, 16) }
  local rcon = 1
  for i = 17, 176, 4 do
    local t1, t2, t3, t4 = w[i - 4], w[i - 3], w[i - 2], w[i - 1]
    if (i - 1) % 16 == 0 then
      t1, t2, t3, t4 = bxor(SBOX[t2], rcon), SBOX[t3], SBOX[t4], SBOX[t1]
      rcon = xtime(rcon)
    end
    w[i], w[i + 1], w[i + 2], w[i + 3] =
      bxor(w[i - 16], t1), bxor(w[i - 15], t2), bxor(w[i - 14], t3), bxor(w[i - 13], t4)
  end
  return w
end

local SHIFT = { 1, 6, 11, 16, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12 }
local UNSHIFT = { 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3, 16, 13, 10, 7, 4 }

local function encrypt_block(w, block)
  local s = { byte(block, 1, 16) }
  for i = 1, 16 do s[i] = bxor(s[i], w[i]) end
  for round = 1, 10 do
    local t = {}
    for i = 1, 16 do t[i] = SBOX[s[SHIFT[i]]] end
    local k = round * 16
    if round < 10 then
      for c = 1, 13, 4 do
        local a0, a1, a2, a3 = t[c], t[c + 1], t[c + 2], t[c + 3]
        s[c] = bxor(M2[a0], M3[a1], a2, a3, w[k + c])
        s[c + 1] = bxor(a0, M2[a1], M3[a2], a3, w[k + c + 1])
        s[c + 2] = bxor(a0, a1, M2[a2], M3[a3], w[k + c + 2])
        s[c + 3] = bxor(M3[a0], a1, a2, M2[a3], w[k + c + 3])
      end
    else
      for i = 1, 16 do s[i] = bxor(t[i], w[k + i]) end
    end
  end
  return char(unpack(s))
end

local function decrypt_block(w, block)
  local s = { byte(block, 1, 16) }
  for i = 1, 16 do s[i] = bxor(s[i], w[160 + i]) end
  for round = 9, 0, -1 do
    local t = {}
    for i = 1, 16 do t[i] = INV_SBOX[s[UNSHIFT[i]]] end
    local k = round * 16
    for i = 1, 16 do t[i] = bxor(t[i], w[k + i]) end
    if round > 0 then
      for c = 1, 13, 4 do
        local a0, a1, a2, a3 = t[c], t[c + 1], t[c + 2], t[c + 3]
        s[c] = bxor(M14[a0], M11[a1], M13[a2], M9[a3])
        s[c + 1] = bxor(M9[a0], M14[a1], M11[a2], M13[a3])
        s[c + 2] = bxor(M13[a0], M9[a1], M14[a2], M11[a3])
        s[c + 3] = bxor(M11[a0], M13[a1], M9[a2], M14[a3])
      end
    else
      s = t
    end
  end
  return char(unpack(s))
end

local function xor_strings(a, b)
  local out = {}
  for i = 1, #a do out[i] = bxor(byte(a, i), byte(b, i)) end
  return char(unpack(out))
end

-- ---- GHASH (GF(2^128), NIST SP 800-38D) --------------------------------------------------

local function words(block)
  local b = { byte(block, 1, 16) }
  return {
    bor(lshift(b[1], 24), lshift(b[2], 16), lshift(b[3], 8), b[4]),
    bor(lshift(b[5], 24), lshift(b[6], 16), lshift(b[7], 8), b[8]),
    bor(lshift(b[9], 24), lshift(b[10], 16), lshift(b[11], 8), b[12]),
    bor(lshift(b[13], 24), lshift(b[14], 16), lshift(b[15], 8), b[16]),
  }
end

-- Byte tables of the multiplication by H: entry [j][b] is the product of H with a block whose
-- only non-zero byte is b at position j (built from H * x^i for i = 0..127), so a product is
-- the XOR of 16 entries.
local function ghash_table(h)
  local v = words(h)
  local powers = {}
  for i = 0, 127 do
    powers[i] = { v[1], v[2], v[3], v[4] }
    local carry = band(v[4], 1)
    v[4] = bor(rshift(v[4], 1), lshift(band(v[3], 1), 31))
    v[3] = bor(rshift(v[3], 1), lshift(band(v[2], 1), 31))
    v[2] = bor(rshift(v[2], 1), lshift(band(v[1], 1), 31))
    v[1] = rshift(v[1], 1)
    if carry == 1 then v[1] = bxor(v[1], 0xe1000000) end
  end
  local tables = {}
  for j = 0, 15 do
    local t = { [0] = { 0, 0, 0, 0 } }
    for b = 1, 255 do
      local bit = 0
      while not btest(b, lshift(1, bit)) do bit = bit + 1 end
      local rest, p = t[b - lshift(1, bit)], powers[j * 8 + 7 - bit]
      t[b] = { bxor(rest[1], p[1]), bxor(rest[2], p[2]), bxor(rest[3], p[3]), bxor(rest[4], p[4]) }
    end
    tables[j + 1] = t
  end
  return tables
end

local function ghash(tables, data)
  local y1, y2, y3, y4 = 0, 0, 0, 0
  for start = 1, #data, 16 do
    local b = { byte(data, start, start + 15) }
    local y = { y1, y2, y3, y4 }
    y1, y2, y3, y4 = 0, 0, 0, 0
    for j = 1, 16 do
      local word = y[rshift(j - 1, 2) + 1]
      local shift = 24 - 8 * ((j - 1) % 4)
      local e = tables[j][bxor(b[j], band(rshift(word, shift), 0xff))]
      y1, y2, y3, y4 = bxor(y1, e[1]), bxor(y2, e[2]), bxor(y3, e[3]), bxor(y4, e[4])
    end
  end
  local out = {}
  for _, y in ipairs({ y1, y2, y3, y4 }) do
    out[#out + 1] = char(rshift(y, 24), band(rshift(y, 16), 0xff), band(rshift(y, 8), 0xff), band(y, 0xff))
  end
  return concat(out)
end

local function zero_padded(data)
  local rest = #data % 16
  return rest == 0 and data or data .. string.rep("\0", 16 - rest)
end

local function be64(n)
  local out = {}
  for i = 8, 1, -1 do
    out[i] = char(n % 256)
    n = math.floor(n / 256)
  end
  return concat(out)
end

local function gcm_open(cipher, nonce, body, aad)
  if #body < 16 then return nil end
  local ciphertext, tag = body:sub(1, -17), body:sub(-16)
  local counter = nonce .. "\0\0\0\1"
  local function block_counter(n)
    local c = { byte(counter, 1, 16) }
    local carry = n
    for i = 16, 13, -1 do
      local v = c[i] + carry
      c[i], carry = v % 256, math.floor(v / 256)
    end
    return char(unpack(c))
  end
  local s = ghash(cipher.tables, zero_padded(aad) .. zero_padded(ciphertext)
    .. be64(#aad * 8) .. be64(#ciphertext * 8))
  local expected = xor_strings(encrypt_block(cipher.w, counter), s)
  if expected ~= tag then return nil end
  local out = {}
  for start = 1, #ciphertext, 16 do
    local chunk = ciphertext:sub(start, start + 15)
    local stream = encrypt_block(cipher.w, block_counter((start - 1) / 16 + 1))
    out[#out + 1] = xor_strings(chunk, stream:sub(1, #chunk))
  end
  return concat(out)
end

local function ecb_open(cipher, body)
  local out = {}
  for start = 1, #body, 16 do out[#out + 1] = decrypt_block(cipher.w, body:sub(start, start + 15)) end
  return concat(out)
end

local function new_cipher(key)
  local w = expand_key(key)
  return { w = w, tables = ghash_table(encrypt_block(w, string.rep("\0", 16))) }
end

local function unpad(padded)
  local count = byte(padded, -1) or 0
  if count < 1 or count > 16 or count > #padded then return nil end
  if padded:sub(-count) ~= string.rep(char(count), count) then return nil end
  return padded:sub(1, -count - 1)
end

-- ---- helpers -------------------------------------------------------------------------------

local function hex(data)
  return (data:gsub(".", function(c) return string.format("%02x", byte(c)) end))
end

local function unhex(text)
  return (text:gsub("%x%x", function(h) return char(tonumber(h, 16)) end))
end

local function uint(data, at, size)
  local value = 0
  for i = at, at + size - 1 do value = value * 256 + byte(data, i) end
  return value
end

-- ---- the packet program interpreter ----------------------------------------------------------
-- run(program, data, at, params) reads the fields of one packet from the Lua string `data`
-- starting at the 1-based position `at`, as the schema's construct would. It returns a result:
--   items: what to show, {field, at, len, value, problem}
--   values: field values by name (what later length rules and conditions read)
--   stop: nil when every field was read, "short" when the data ended early, "bad" on a defect
-- `whole` says that the packet must end where the data ends (a decrypted message), rather
-- than be followed by the next one (a stream). Fields of nested structs are flattened, so
-- `values` holds the latest field of each name: what construct's `this` sees in a struct.

local run_fields

local function read_item(item, data, at, values, params, result)
  local kind = item.kind
  if kind == "uint" then
    if at + item.size - 1 > #data then return nil, "short" end
    local value = uint(data, at, item.size)
    local problem
    if item.constant and value ~= item.constant then
      problem = string.format("%s must be %d, got %d", item.path, item.constant, value)
    elseif item.valid and not item.valid[value] then
      problem = string.format("%s: value %d is not allowed", item.path, value)
    elseif item.enum and not SCHEMA.enums[item.enum][value] then
      problem = string.format("%s: unknown %s value %d", item.path, item.enum, value)
    elseif item.low and (value < item.low or value > item.high) then
      problem = string.format("%s must be %d..%d, got %d", item.path, item.low, item.high, value)
    end
    values[item.name] = value
    result.items[#result.items + 1] = { field = item.field, at = at, len = item.size, problem = problem }
    if problem then result.problems = result.problems + 1 end
    return at + item.size
  elseif kind == "bytes" or kind == "rest" or kind == "prefixed" then
    local start, length = at, nil
    if kind == "bytes" then
      length = type(item.length) == "function" and item.length(values, params) or item.length
    elseif kind == "rest" then
      length = #data - at + 1
    else
      if at + item.prefix - 1 > #data then return nil, "short" end
      length = uint(data, at, item.prefix)
      start = at + item.prefix
    end
    if start + length - 1 > #data then return nil, "short" end
    local raw = data:sub(start, start + length - 1)
    local value, problem = raw, nil
    if item.constant and raw ~= item.constant then
      problem = item.path .. " must be " .. hex(item.constant)
    elseif item.decode then
      value, problem = DECODERS[item.decode](raw, values)
      if problem then problem = item.path .. ": " .. problem end
    end
    values[item.name] = value
    result.items[#result.items + 1] = {
      field = item.field, at = at, len = start + length - at, value = item.decode and value or nil,
      problem = problem,
    }
    if problem then result.problems = result.problems + 1 end
    return start + length
  elseif kind == "repeat" then
    local count = item.count(values, params)
    for _ = 1, count do
      local stop
      at, stop = read_item(item.element, data, at, {}, params, result)
      if at == nil or stop then return at, stop end
    end
    return at
  elseif kind == "record" then
    return run_fields(item.fields, data, at, {}, params, result)
  elseif kind == "if" then
    local chosen = item.condition(values, params) and item["then"] or item.otherwise
    return read_item(chosen, data, at, values, params, result)
  elseif kind == "choice" then
    for _, option in ipairs(item.options) do
      local attempt = { items = {}, problems = 0 }
      local after, stop = read_item(option, data, at, {}, params, attempt)
      if after and not stop and attempt.problems == 0 then
        for _, shown in ipairs(attempt.items) do result.items[#result.items + 1] = shown end
        return after
      end
    end
    result.items[#result.items + 1] = { at = at, len = 0, problem = item.path .. ": no choice fits" }
    result.problems = result.problems + 1
    return nil, "bad"
  elseif kind == "nothing" then
    return at
  elseif kind == "end" then
    if result.whole and at <= #data then
      result.items[#result.items + 1] = {
        at = at, len = #data - at + 1, problem = (#data - at + 1) .. " trailing bytes after the end of the packet",
      }
      result.problems = result.problems + 1
    end
    return at
  end
  error("unknown item kind " .. tostring(kind))
end

run_fields = function(fields, data, at, values, params, result)
  for _, item in ipairs(fields) do
    local after, stop = read_item(item, data, at, values, params, result)
    if after == nil then return nil, stop end
    at = after
  end
  return at
end

local function run(program, data, at, params, whole)
  local result = { items = {}, values = {}, problems = 0, whole = whole }
  local after, stop = run_fields(program.fields, data, at, result.values, params, result)
  result.stop, result.after = stop, after
  return result
end

-- ---- display -----------------------------------------------------------------------------------

local function show(result, tvb, base, tree, expert_field, label)
  for _, shown in ipairs(result.items) do
    local range = tvb(base + shown.at - 1, shown.len)
    local item
    if shown.field then
      if shown.value ~= nil then
        item = tree:add(shown.field, range, shown.value)
      else
        item = tree:add(shown.field, range)
      end
    else
      item = tree
    end
    if shown.problem then item:add_proto_expert_info(expert_field, label .. ": " .. shown.problem) end
  end
end

-- ---- decoders of the schemas' own adapters -------------------------------------------------

local function ipv6_text(raw)
  local groups = {}
  for i = 1, 16, 2 do groups[#groups + 1] = byte(raw, i) * 256 + byte(raw, i + 1) end
  local best_start, best_length, start = nil, 1, nil
  for i = 1, 9 do
    if i <= 8 and groups[i] == 0 then
      start = start or i
    elseif start then
      if i - start > best_length then best_start, best_length = start, i - start end
      start = nil
    end
  end
  local function part(from, to)
    local out = {}
    for i = from, to do out[#out + 1] = string.format("%x", groups[i]) end
    return concat(out, ":")
  end
  if not best_start then return part(1, 8) end
  return part(1, best_start - 1) .. "::" .. part(best_start + best_length, 8)
end

DECODERS = {
  -- schemas.jproxy's host: checked against the address type before it.
  host = function(raw, values)
    local size = SCHEMA.address_sizes[values.type]
    if size then
      if #raw ~= size then
        return hex(raw), string.format("%s address needs %d bytes, got %d",
          SCHEMA.enums.AddressType[values.type], size, #raw)
      end
      if size == 4 then return string.format("%d.%d.%d.%d", byte(raw, 1, 4)) end
      return ipv6_text(raw)
    end
    if #raw == 0 then return "", "empty host name" end
    if raw:find("[\128-\255]") then return hex(raw), "host name is not ASCII" end
    return raw
  end,
}

-- ---- protocols, fields, preferences ------------------------------------------------------

local function new_protocol(spec)
  local proto = Proto(spec.name, spec.description)
  local fields = {}
  for _, f in ipairs(spec.fields) do
    local field
    local enum = f.enum and SCHEMA.enums[f.enum] or nil
    if f.kind == "uint" then
      local constructor = ({ [1] = ProtoField.uint8, [2] = ProtoField.uint16, [4] = ProtoField.uint32 })[f.size]
      field = constructor(f.abbr, f.label, f.hex and base.HEX or base.DEC, enum, nil, f.blurb)
    elseif f.kind == "string" then
      field = ProtoField.string(f.abbr, f.label, base.ASCII, f.blurb)
    elseif f.kind == "none" then
      field = ProtoField.none(f.abbr, f.label, f.blurb)
    else
      field = ProtoField.bytes(f.abbr, f.label, base.NONE, f.blurb)
    end
    fields[f.abbr] = field
    proto.fields[#proto.fields + 1] = field
  end
  local experts = {
    malformed = ProtoExpert.new(spec.name .. ".malformed", "Malformed message",
      expert.group.MALFORMED, expert.severity.ERROR),
    decryption = ProtoExpert.new(spec.name .. ".decryption_failed", "Frame does not decrypt",
      expert.group.DECRYPTION, expert.severity.ERROR),
    no_key = ProtoExpert.new(spec.name .. ".no_key", "No session key for this tunnel",
      expert.group.DECRYPTION, expert.severity.NOTE),
  }
  proto.experts = { experts.malformed, experts.decryption, experts.no_key }
  return proto, fields, experts
end

-- Bind each program item to its ProtoField once.
local function bind(fields, items)
  for _, item in ipairs(items) do
    if item.abbr then item.field = fields[item.abbr] end
    if item.element then bind(fields, { item.element }) end
    if item.fields then bind(fields, item.fields) end
    if item.options then bind(fields, item.options) end
    if item["then"] then bind(fields, { item["then"], item.otherwise }) end
  end
end

-- ---- the key log ---------------------------------------------------------------------------

-- Read again only when the file has grown: a live capture may see a tunnel before its line.
local key_log = { path = nil, keys = {}, size = -1 }

local function session_key(wrapped_prefix, path)
  if path == nil or path == "" then return nil end
  if key_log.path ~= path then key_log.path, key_log.keys, key_log.size = path, {}, -1 end
  local found = key_log.keys[wrapped_prefix]
  if found then return found end
  local file = io.open(path, "r")
  if not file then return nil end
  local size = file:seek("end")
  if size == key_log.size then
    file:close()
    return nil
  end
  key_log.size = size
  file:seek("set")
  for line in file:lines() do
    local label, id, key = line:match("^(%S+) (%x+) (%x+)%s*$")
    if label == SCHEMA.key_log.label and #key == 32 then key_log.keys[id:lower()] = unhex(key) end
  end
  file:close()
  return key_log.keys[wrapped_prefix]
end

-- ---- streams -------------------------------------------------------------------------------

local tcp_stream = Field.new("tcp.stream")
local C2S, S2C = "c2s", "s2c"

local function conversation(states, pinfo)
  local id = tcp_stream()
  id = id and id.value or 0
  local state = states[id]
  if state == nil then
    state = { client = tostring(pinfo.src) .. ":" .. pinfo.src_port, phase = { c2s = 1, s2c = 1 },
      counter = { c2s = 0, s2c = 0 } }
    states[id] = state
  end
  local from = tostring(pinfo.src) .. ":" .. pinfo.src_port
  return state, from == state.client and C2S or S2C
end

-- ---- one protocol's dissector --------------------------------------------------------------

local function open_frame(state, dir, counter, header, body, keylog_path)
  if state.key == nil and state.wrapped_prefix then
    state.key = session_key(state.wrapped_prefix, keylog_path)
  end
  if state.key == nil then return nil, nil end
  state.cipher = state.cipher or new_cipher(state.key)
  local padded
  if state.dialect == "gcm" then
    local nonce = SCHEMA.nonce_prefix[dir] .. be64(counter)
    padded = gcm_open(state.cipher, nonce, body, header)
    if padded == nil then
      return nil, "authentication failed (tampered, replayed, reordered or dropped frame)"
    end
  elseif state.dialect == "ecb" then
    padded = ecb_open(state.cipher, body)
  else
    return nil, "no dialect: the hello was not captured, or named an unknown minor version"
  end
  local message = unpad(padded)
  if message == nil then return nil, "bad PKCS#7 padding" end
  return message
end

-- What one PDU at `at` is; only called on the first pass, in stream order.
local function next_pdu(spec, state, dir, data, at, prefs)
  local sequence = spec.sequence[dir]
  local phase = state.phase[dir]
  local name = sequence[phase] or spec.frames
  if name == nil then
    return { name = "data", at = at, length = #data - at + 1, problem = "data after the last message" }
  end
  local program = spec.programs[name]
  local result = run(program, data, at, { key_size = prefs.key_size }, false)
  if result.stop == "short" then return nil end
  local entry = { name = name, result = result, at = at, length = (result.after or #data + 1) - at }
  if result.stop then entry.length = #data - at + 1 end
  local values = result.values
  if sequence[phase] then
    state.phase[dir] = phase + 1
    for field, action in pairs(spec.learn[name] or {}) do
      if values[field] ~= nil then
        if action == "dialect" then
          state.dialect = SCHEMA.dialects[values[field]]
        elseif action == "wrapped_key" and type(values[field]) == "string" then
          state.wrapped_prefix = hex(values[field]:sub(1, SCHEMA.key_log.prefix_bytes))
        end
      end
    end
    return entry
  end
  -- a frame: decrypt it, then read the message inside
  entry.counter = state.counter[dir]
  state.counter[dir] = state.counter[dir] + 1
  if values.ciphertext == nil or result.problems > 0 then return entry end
  local message, failure = open_frame(state, dir, entry.counter, data:sub(at, at), values.ciphertext,
    prefs.keylog)
  entry.failure = failure
  if message == nil then
    entry.no_key = failure == nil
    return entry
  end
  entry.plaintext = message
  local code = byte(message, 1)
  local message_name = code and spec.messages[dir][code]
  if message_name == nil then
    entry.message_problem = code and string.format("unknown message type 0x%02x", code) or "empty message"
    return entry
  end
  entry.message_name = message_name
  entry.message = run(spec.programs[message_name], message, 1, {}, true)
  if entry.message.stop == "short" then entry.message_problem = "message ends early" end
  return entry
end

local function show_pdu(spec, fields, experts, entry, tvb, offset, tree, dir)
  local label = entry.name
  -- A frame has a field of its own; jproxy.message holds message names only (the handshake's
  -- and those a frame carries), so a filter on it never matches the frame around a message.
  local layer = entry.counter and fields[spec.name .. ".frame"] or fields[spec.name .. ".message"]
  local subtree = tree:add(layer, tvb(offset, entry.length), entry.name)
  subtree:set_text(entry.name .. (entry.counter and string.format(" #%d (%s)", entry.counter, dir) or ""))
  if entry.problem then subtree:add_proto_expert_info(experts.malformed, entry.problem) return label end
  show(entry.result, tvb, offset - entry.at + 1, subtree, experts.malformed, entry.name)
  if entry.counter == nil then return label end
  if entry.no_key then
    subtree:add_proto_expert_info(experts.no_key, "no key for this tunnel: set the key log preference")
    return label
  end
  if entry.failure then
    subtree:add_proto_expert_info(experts.decryption, entry.failure)
    return label .. " [" .. entry.failure .. "]"
  end
  if entry.plaintext == nil then return label end
  local decrypted = ByteArray.new(entry.plaintext, true):tvb("Decrypted frame")
  if entry.message_problem and entry.message == nil then
    local item = subtree:add(fields[spec.name .. ".message"], decrypted(), "?")
    item:add_proto_expert_info(experts.malformed, entry.message_problem)
    return label .. " [" .. entry.message_problem .. "]"
  end
  local item = subtree:add(fields[spec.name .. ".message"], decrypted(), entry.message_name)
  item:set_text(entry.message_name)
  show(entry.message, decrypted, 0, item, experts.malformed, entry.message_name)
  if entry.message_problem then item:add_proto_expert_info(experts.malformed, entry.message_problem) end
  local id = entry.message.values.connection_id
  return entry.message_name .. (id and ("[" .. id .. "]") or "")
end

local function register(spec)
  local proto, fields, experts = new_protocol(spec)
  for _, program in pairs(spec.programs) do
    bind(fields, program.fields)
  end
  proto.prefs.port = Pref.uint("TCP port", spec.port, "the TCP port of the " .. spec.description)
  if spec.frames then
    proto.prefs.keylog = Pref.string("Key log file", "",
      "a file written by gjproxy client or server with --keylog: decrypts the tunnels in it")
    proto.prefs.key_size = Pref.uint("RSA key bytes", 256,
      "length of the wrapped session key in the login reply (the RSA modulus, 256 for 2048 bits)")
  end
  -- What the first pass found, by the packet where each PDU ends: later passes (a click in
  -- the GUI, tshark -2) get the same PDUs, though not always in the same tvb, and must not
  -- run the stream state (phases, GCM counters) again.
  local states, found = {}, {}

  function proto.init()
    states, found = {}, {}
  end

  local function fingerprint(data, at, length)
    if at + length - 1 > #data then return nil end
    return data:sub(at, at + math.min(length, 16) - 1) .. data:sub(math.max(at, at + length - 16), at + length - 1)
  end

  local function recall(pinfo, data, at, taken)
    for index, known in ipairs(found[pinfo.number] or {}) do
      if not taken[index] and fingerprint(data, at, known.entry.length) == known.fingerprint then
        taken[index] = true
        return known.entry
      end
    end
  end

  function proto.dissector(tvb, pinfo, tree)
    local state, dir = conversation(states, pinfo)
    local data = tvb:raw()
    local prefs = {}
    if spec.frames then prefs = { keylog = proto.prefs.keylog, key_size = proto.prefs.key_size } end
    local root  -- added with the first whole PDU: a segment that only starts one shows none
    local labels = {}
    local at, taken = 1, {}
    while at <= #data do
      local entry
      if pinfo.visited then
        entry = recall(pinfo, data, at, taken)
      else
        entry = next_pdu(spec, state, dir, data, at, prefs)
        if entry then
          found[pinfo.number] = found[pinfo.number] or {}
          local list = found[pinfo.number]
          list[#list + 1] = { entry = entry, fingerprint = fingerprint(data, at, entry.length) }
        end
      end
      if entry == nil then
        pinfo.desegment_offset = at - 1
        pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
        at = #data + 1
        break
      end
      root = root or tree:add(proto, tvb())
      labels[#labels + 1] = show_pdu(spec, fields, experts, entry, tvb, at - 1, root, dir)
      at = at + entry.length
    end
    pinfo.cols.protocol = spec.column
    if #labels > 0 then
      pinfo.cols.info = (dir == C2S and "C->S " or "S->C ") .. concat(labels, ", ")
    end
    return at - 1
  end

  local tcp_port = DissectorTable.get("tcp.port")
  local registered = spec.port
  tcp_port:add(registered, proto)
  tcp_port:add_for_decode_as(proto)
  function proto.prefs_changed()
    if proto.prefs.port ~= registered then
      tcp_port:remove(registered, proto)
      registered = proto.prefs.port
      tcp_port:add(registered, proto)
    end
  end
end

for _, spec in ipairs(SCHEMA.protocols) do register(spec) end

# frozen_string_literal: true

require 'strscan'

module OpsChain
  # A TOML file that does not parse; the message names the file and line.
  class TomlError < ArgumentError; end

  # A TOML 1.0 reader for repository properties (Debian's Ruby has none): tables, dotted keys, arrays of tables,
  # basic and literal strings (also multi-line, with escapes), integers (decimal, hex, octal, binary), floats,
  # booleans, arrays, inline tables and comments. Dates and times are kept as the strings written, as JSON has
  # no date type; inf and nan are refused for the same reason.
  class Toml
    BARE_KEY = /[A-Za-z0-9_-]+/
    WHITESPACE = /[ \t]*/
    DATE_TIME = /\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?)?|\d{2}:\d{2}:\d{2}(?:\.\d+)?/
    ESCAPES = { 'b' => "\b", 't' => "\t", 'n' => "\n", 'f' => "\f", 'r' => "\r", '"' => '"', '\\' => '\\', 'e' => "\e" }.freeze

    def self.parse(text, source = 'TOML') = new(text, source).document

    def initialize(text, source)
      @source = source
      @scanner = StringScanner.new(text.sub(/\A\uFEFF/, ''))
      @root = {}
      # Tables by object id: defined by a [header], made by dotted keys, closed (inline tables, literal arrays),
      # and the arrays made by [[headers]]; the rules on redefining a table need to tell them apart.
      @headed = {}
      @dotted = {}
      @closed = {}
      @table_arrays = {}
    end

    def document
      current = @root
      loop do
        skip_blank
        break if @scanner.eos?

        if @scanner.scan(/\[\[/)
          current = array_table(key_path(']]'))
        elsif @scanner.scan(/\[/)
          current = table(key_path(']'))
        else
          key_value(current)
        end
        end_of_line
      end
      @root
    end

    private

    # --- structure ----------------------------------------------------------------------------------------------

    def key_path(closing)
      @scanner.skip(WHITESPACE)
      keys = key
      @scanner.skip(WHITESPACE)
      fail!("expected #{closing} to close the table header") unless @scanner.scan(Regexp.new(Regexp.escape(closing)))
      keys
    end

    def table(keys)
      parent = descend(@root, keys[0..-2], keys)
      name = keys.last
      existing = parent[name]
      if existing.nil?
        parent[name] = {}.tap { |created| @headed[created.object_id] = true }
      elsif existing.is_a?(Hash) && !@headed[existing.object_id] && !@dotted[existing.object_id] && !@closed[existing.object_id]
        @headed[existing.object_id] = true
        existing
      else
        fail!("table [#{keys.join('.')}] is defined more than once")
      end
    end

    def array_table(keys)
      parent = descend(@root, keys[0..-2], keys)
      name = keys.last
      list = parent[name]
      if list.nil?
        list = parent[name] = []
        @table_arrays[list.object_id] = true
      elsif !(list.is_a?(Array) && @table_arrays[list.object_id])
        fail!("[[#{keys.join('.')}]] names a key that is not an array of tables")
      end
      {}.tap { |created| list << created }
    end

    # The table a header's leading keys name, making missing ones; an array of tables means its last table.
    def descend(table, keys, whole)
      keys.reduce(table) do |current, name|
        value = current[name] ||= {}
        value = value.last if value.is_a?(Array) && @table_arrays[value.object_id]
        fail!("#{whole.join('.')}: #{name} is already a value, not a table") unless value.is_a?(Hash) && !@closed[value.object_id]
        value
      end
    end

    def key_value(table)
      keys = key
      @scanner.skip(WHITESPACE)
      fail!("expected = after the key #{keys.join('.')}") unless @scanner.scan(/=/)
      @scanner.skip(WHITESPACE)
      assign(table, keys, value)
    end

    def assign(table, keys, value)
      target = keys[0..-2].reduce(table) do |current, name|
        child = current[name]
        if child.nil?
          child = current[name] = {}
          @dotted[child.object_id] = true
        elsif !child.is_a?(Hash) || @closed[child.object_id] || @headed[child.object_id]
          fail!("#{keys.join('.')}: #{name} is already defined and cannot take more keys")
        end
        child
      end
      fail!("#{keys.join('.')} is defined more than once") if target.key?(keys.last)

      target[keys.last] = value
    end

    def key
      keys = [simple_key]
      while @scanner.check(/[ \t]*\./)
        @scanner.skip(WHITESPACE)
        @scanner.skip(/\./)
        @scanner.skip(WHITESPACE)
        keys << simple_key
      end
      keys
    end

    def simple_key
      if @scanner.scan(/"/) then basic_string
      elsif @scanner.scan(/'/) then literal_string
      else @scanner.scan(BARE_KEY) || fail!('expected a key (letters, digits, _ and -, or a quoted key)')
      end
    end

    # --- values -------------------------------------------------------------------------------------------------

    def value
      if @scanner.scan(/"""/) then multiline_basic_string
      elsif @scanner.scan(/"/) then basic_string
      elsif @scanner.scan(/'''/) then multiline_literal_string
      elsif @scanner.scan(/'/) then literal_string
      elsif @scanner.scan(/true(?![A-Za-z0-9_-])/) then true
      elsif @scanner.scan(/false(?![A-Za-z0-9_-])/) then false
      elsif @scanner.scan(/\[/) then array
      elsif @scanner.scan(/\{/) then inline_table
      elsif (text = @scanner.scan(DATE_TIME)) then text
      else number
      end
    end

    def number
      text = @scanner.scan(/[+-]?(?:[0-9A-Za-z_.]*[eE][+-][0-9_]+|[0-9A-Za-z_.]+)/) or fail!('expected a value (a string, number, boolean, date, array or inline table)')
      case text
      when /\A[+-]?(inf|nan)\z/ then fail!("#{text} cannot be a property: JSON has no infinity or NaN")
      when /\A0x\h+(_\h+)*\z/ then Integer(text[2..].delete('_'), 16)
      when /\A0o[0-7]+(_[0-7]+)*\z/ then Integer(text[2..].delete('_'), 8)
      when /\A0b[01]+(_[01]+)*\z/ then Integer(text[2..].delete('_'), 2)
      when /\A[+-]?(0|[1-9]\d*(_\d+)*)\z/ then Integer(text.delete('_'), 10)
      when /\A[+-]?(0|[1-9]\d*(_\d+)*)(\.\d+(_\d+)*)?([eE][+-]?\d+(_\d+)*)?\z/ then Float(text.delete('_'))
      else fail!("#{text} is not a TOML value (numbers are decimal with optional _ between digits, or 0x, 0o, 0b)")
      end
    end

    def array
      items = []
      loop do
        skip_blank
        break if @scanner.scan(/\]/)

        items << value
        skip_blank
        next if @scanner.scan(/,/)
        break if @scanner.scan(/\]/)

        fail!('expected , or ] in an array')
      end
      items.tap { @closed[items.object_id] = true }
    end

    def inline_table
      table = {}
      @scanner.skip(WHITESPACE)
      unless @scanner.scan(/\}/)
        loop do
          @scanner.skip(WHITESPACE)
          keys = key
          @scanner.skip(WHITESPACE)
          fail!("expected = after the key #{keys.join('.')}") unless @scanner.scan(/=/)
          @scanner.skip(WHITESPACE)
          assign(table, keys, value)
          @scanner.skip(WHITESPACE)
          next if @scanner.scan(/,/)
          break if @scanner.scan(/\}/)

          fail!('expected , or } in an inline table (an inline table is written on one line)')
        end
      end
      close(table)
    end

    # Inline tables are complete as written: nothing may add keys to them or the tables inside them.
    def close(value)
      @closed[value.object_id] = true
      value.each_value { |inner| close(inner) if inner.is_a?(Hash) }
      value
    end

    def basic_string
      text = +''
      loop do
        fail!('unterminated string') if @scanner.eos?
        if @scanner.scan(/"/) then return text
        elsif @scanner.scan(/\\/) then text << escape
        elsif (chunk = @scanner.scan(/[^"\\\n\x00-\x08\x0a-\x1f\x7f]+/)) then text << chunk
        else fail!('a string may not hold a line break or control character (use """ for several lines, or an escape)')
        end
      end
    end

    def multiline_basic_string
      @scanner.skip(/\r?\n/)
      text = +''
      loop do
        fail!('unterminated """ string') if @scanner.eos?
        if (quotes = @scanner.scan(/"{3,5}/))
          return text << quotes[3..]
        elsif @scanner.scan(/\\[ \t]*\r?\n[ \t\r\n]*/) then next
        elsif @scanner.scan(/\\/) then text << escape
        elsif (chunk = @scanner.scan(/"{1,2}|[^"\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+/)) then text << chunk
        else fail!('a string may not hold a control character (use an escape)')
        end
      end
    end

    def literal_string
      text = @scanner.scan(/[^'\n\x00-\x08\x0a-\x1f\x7f]*/)
      fail!("unterminated 'string' (literal strings end on the same line)") unless @scanner.scan(/'/)
      text
    end

    def multiline_literal_string
      @scanner.skip(/\r?\n/)
      text = @scanner.scan_until(/'{3,5}/) or fail!("unterminated ''' string")
      quotes = text[/'+\z/]
      text[0...(text.length - quotes.length)] + quotes[3..]
    end

    def escape
      if (hex = @scanner.scan(/u\h{4}|U\h{8}/))
        code = hex[1..].to_i(16)
        fail!("\\#{hex} is not a Unicode scalar value") if code > 0x10FFFF || (0xD800..0xDFFF).cover?(code)
        [code].pack('U')
      elsif (letter = @scanner.scan(/[btnfr"\\e]/))
        ESCAPES.fetch(letter)
      else
        fail!("unknown escape \\#{@scanner.peek(1)} (use \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX or \\UXXXXXXXX)")
      end
    end

    # --- layout -------------------------------------------------------------------------------------------------

    def skip_blank
      @scanner.skip(/(?:[ \t\r\n]+|#[^\n]*)*/)
    end

    def end_of_line
      @scanner.skip(WHITESPACE)
      @scanner.skip(/#[^\n]*/)
      return if @scanner.eos? || @scanner.scan(/\r?\n/)

      fail!("unexpected #{@scanner.peek(12).inspect} after a value (one key = value per line)")
    end

    def fail!(message)
      line = @scanner.string.byteslice(0, @scanner.pos).count("\n") + 1
      raise TomlError, "#{@source}: line #{line}: #{message}"
    end
  end
end

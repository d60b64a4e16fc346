# frozen_string_literal: true

require_relative 'test_helper'
require 'opschain/toml'

class TomlTest < Minitest::Test
  include RunnerTest

  def parse(text) = OpsChain::Toml.parse(text, 'properties.toml')

  def test_tables_dotted_keys_and_arrays_of_tables
    document = parse(<<~TOML)
      # the database
      title = "app" # trailing comment
      server.host = "db1"
      server."port number" = 5432
      'literal key' = 1

      [database]
      enabled = true
      ports = [ 8000, 8001,
        8002, # comment inside
      ]

      [database.replica]
      lag = 0.5

      [[products]]
      name = "Hammer"
      sku = 738594937

      [[products]]

      [[products]]
      name = "Nail"
      [products.dimensions]
      length = 2
    TOML
    assert_equal(
      {
        'title' => 'app', 'server' => { 'host' => 'db1', 'port number' => 5432 }, 'literal key' => 1,
        'database' => { 'enabled' => true, 'ports' => [8000, 8001, 8002], 'replica' => { 'lag' => 0.5 } },
        'products' => [{ 'name' => 'Hammer', 'sku' => 738_594_937 }, {}, { 'name' => 'Nail', 'dimensions' => { 'length' => 2 } }]
      },
      document
    )
  end

  def test_strings_with_escapes_and_several_lines
    document = parse(<<~'TOML')
      basic = "tab\there \"quoted\" \u00e9 \U0001F600 back\\slash"
      literal = 'C:\Users\nodejs'
      lines = """
      Roses are red
      Violets are blue"""
      folded = """\
          The quick brown \
          fox."""
      raw = '''
      first line
        \n stays'''
      quotes = """a "quoted" word"""""
    TOML
    assert_equal "tab\there \"quoted\" é 😀 back\\slash", document['basic']
    assert_equal 'C:\Users\nodejs', document['literal']
    assert_equal "Roses are red\nViolets are blue", document['lines']
    assert_equal 'The quick brown fox.', document['folded']
    assert_equal "first line\n  \\n stays", document['raw']
    assert_equal 'a "quoted" word""', document['quotes']
  end

  def test_numbers_booleans_dates_and_inline_tables
    document = parse(<<~TOML)
      int = +1_000
      negative = -17
      hex = 0xDEAD_beef
      octal = 0o755
      binary = 0b1101
      float = 6.626e-34
      exponent = 1e+3
      fraction = -0.01
      flag = false
      when = 1979-05-27T07:32:00-08:00
      local = 1979-05-27 07:32:00
      day = 1979-05-27
      time = 07:32:00.999
      point = { x = 1, y.z = "two", nested = { deep = [1, "mixed", { a = 1 }] } }
      empty = {}
    TOML
    assert_equal 1000, document['int']
    assert_equal(-17, document['negative'])
    assert_equal 0xDEADBEEF, document['hex']
    assert_equal 0o755, document['octal']
    assert_equal 13, document['binary']
    assert_in_delta 6.626e-34, document['float']
    assert_equal 1000.0, document['exponent']
    assert_equal(-0.01, document['fraction'])
    assert_equal false, document['flag']
    assert_equal %w[1979-05-27T07:32:00-08:00 1979-05-27\ 07:32:00 1979-05-27 07:32:00.999], document.values_at('when', 'local', 'day', 'time')
    assert_equal({ 'x' => 1, 'y' => { 'z' => 'two' }, 'nested' => { 'deep' => [1, 'mixed', { 'a' => 1 }] } }, document['point'])
    assert_equal({}, document['empty'])
  end

  def test_errors_name_the_file_line_and_what_is_wrong
    {
      "a = 1\na = 2\n" => /line 2: a is defined more than once/,
      "[t]\nx = 1\n[t]\n" => /line 3: table \[t\] is defined more than once/,
      "a = \"open\n" => /line 1: a string may not hold a line break/,
      "a = 01\n" => /line 1: 01 is not a TOML value/,
      "a = inf\n" => /line 1: inf cannot be a property: JSON has no infinity/,
      "a = 1 b = 2\n" => /line 1: unexpected "b = 2/,
      "\n\nb = \"\\q\"\n" => /line 3: unknown escape \\q/,
      "p = { x = 1 }\n[p]\n" => /line 2: table \[p\] is defined more than once/,
      "p = { x = 1 }\np.y = 2\n" => /line 2: p.y: p is already defined and cannot take more keys/,
      "a = [1, 2\nb = 3\n" => /line 2: expected , or \] in an array/,
      "x = 1\n[[x]]\n" => /line 2: \[\[x\]\] names a key that is not an array of tables/,
      "[a\n" => /line 1: expected \] to close the table header/,
      "= 1\n" => /line 1: expected a key/
    }.each do |text, message|
      error = assert_raises(OpsChain::TomlError, text) { parse(text) }
      assert_match(/\Aproperties.toml: /, error.message)
      assert_match message, error.message, text
    end
  end

  def test_properties_toml_is_read_between_json_and_yaml_and_environment_files_after_them
    write_context(properties: { 'project' => {} }, context: { 'parents' => { 'environment' => { 'code' => 'dev' } } }, folder: '.opschain')
    write('.opschain/properties.json', JSON.generate('order' => 'json', 'json_only' => true))
    write('.opschain/properties.toml', <<~TOML)
      order = "toml"
      [server]
      name = "from toml"
    TOML
    write('.opschain/properties.yaml', "order: yaml\n")
    write('.opschain/environments/dev.toml', "[server]\nname = \"dev\"\n")
    write('.opschain/environments/prod.toml', "[server]\nname = \"prod\"\n")
    write('actions.rb', <<~RUBY)
      action :show do
        puts OpsChain.repository_properties.order, OpsChain.repository_properties.json_only
        puts OpsChain.properties.server.name, OpsChain.repository_properties_for(:environment).server.name
      end
    RUBY
    result = action('show', env: { 'OPSCHAIN_REPO_FOLDER' => '.opschain' })
    assert result.success?, result.stderr
    assert_equal %w[yaml true dev dev], result.stdout.lines.map(&:chomp)
  end

  def test_a_toml_error_fails_the_step_naming_the_file_and_line
    write_context(properties: { 'project' => {} }, folder: '.opschain')
    write('.opschain/properties.toml', "ok = 1\nbroken = \n")
    write('actions.rb', "action(:show) { puts OpsChain.properties.ok }\n")
    result = action('show', env: { 'OPSCHAIN_REPO_FOLDER' => '.opschain' })
    refute result.success?
    assert_match %r{\.opschain/properties\.toml: line 2: expected a value}, result.stderr
  end
end

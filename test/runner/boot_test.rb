# frozen_string_literal: true

require_relative 'test_helper'
require 'opschain/compiled_code'

# OpsChain::Boot with this host's Ruby and gems: a record made as runner-image.sh makes it, then Ruby started
# without RubyGems as the runner's commands start it.
class BootTest < Minitest::Test
  include RunnerTest

  # The state a step starts in: no variable that changes where gems come from; the library by -I, as the image's
  # record puts it on the load path.
  def ruby(*args, env: {})
    clean = { 'HOME' => @repo, 'RUBYLIB' => nil, 'RUBYOPT' => nil, 'GEM_HOME' => nil, 'GEM_PATH' => nil }
    stdout, stderr, status = Open3.capture3(clean.merge(env), 'ruby', *args, chdir: @repo)
    Result.new(stdout, stderr, status)
  end

  def write_record
    made = ruby('-I', LIB, '-e', "require 'opschain/boot'; OpsChain::Boot.record")
    assert made.success?, made.stderr
    File.join(@repo, 'gem-paths').tap { |path| File.write(path, made.stdout) }
  end

  STARTED = <<~RUBY
    require 'opschain/boot'
    OpsChain::Boot.start(ARGV.fetch(0))
    state = -> { Object.autoload?(:Gem) ? 'deferred' : 'loaded' }
    puts "start: \#{state.call}"
    require 'opschain'
    puts "library: \#{state.call} \#{defined?(Rake::Task) && defined?(Hashie::Mash)}"
    puts "messages: \#{defined?(DidYouMean)} \#{defined?(ErrorHighlight)}"
  RUBY

  def test_the_record_names_the_library_gems_and_what_rubygems_reads
    lines = File.readlines(write_record, chomp: true)
    assert_equal "home\t#{@repo}", lines.first
    assert(lines.any? { |line| line.match?(%r{\Alib\t.*/rake-[^/]+/lib\z}) }, lines.join("\n"))
    assert(lines.any? { |line| line.match?(%r{\Alib\t.*/hashie-[^/]+/lib\z}) }, lines.join("\n"))
    assert(lines.any? { |line| line.start_with?("specifications\t") }, lines.join("\n"))
  end

  def test_with_the_record_the_library_loads_without_rubygems_and_a_gem_loads_it
    record = write_record
    script = <<~RUBY
      #{STARTED}
      require 'rexml/document'
      puts "rexml: \#{REXML::Document.new('<a>read</a>').root.text} \#{state.call}"
      puts "version: \#{Gem::Version.new('1.10') > Gem::Version.new('1.9')}"
      begin
        require 'no_such_feature_anywhere'
      rescue LoadError => e
        puts "missing: \#{e.message}"
      end
    RUBY
    run = ruby('--disable-gems', '-I', LIB, '-e', script, record)
    assert run.success?, run.stderr
    assert_equal <<~OUT, run.stdout
      start: deferred
      library: deferred constant
      messages: constant constant
      rexml: read loaded
      version: true
      missing: cannot load such file -- no_such_feature_anywhere
    OUT
  end

  def test_kernel_gem_and_the_constant_gem_each_load_rubygems
    record = write_record
    by_gem = ruby('--disable-gems', '-I', LIB, '-e', "#{STARTED}\ngem 'minitest'\nrequire 'minitest'\nputs state.call", record)
    assert by_gem.success?, by_gem.stderr
    assert_match(/\Aloaded\z/, by_gem.stdout.lines.last.chomp)
    by_constant = ruby('--disable-gems', '-I', LIB, '-e', "#{STARTED}\nputs Gem::Requirement.new('>= 1').satisfied_by?(Gem::Version.new('2'))", record)
    assert by_constant.success?, by_constant.stderr
    assert_equal "true\n", by_constant.stdout.lines.last
  end

  def test_bundler_loads_rubygems_first_as_it_expects
    record = write_record
    run = ruby('--disable-gems', '-I', LIB, '-e', "#{STARTED}\nrequire 'bundler'\nputs state.call, Bundler::VERSION.empty?", record)
    assert run.success?, run.stderr
    assert_equal "loaded\nfalse\n", run.stdout.lines.last(2).join
  end

  def test_rubygems_is_loaded_at_once_when_the_record_may_not_hold
    record = write_record
    started = ->(env = {}, path = record) { ruby('--disable-gems', '-I', LIB, '-e', STARTED, path, env: env).stdout.lines.first }
    assert_equal "start: deferred\n", started.call
    assert_equal "start: loaded\n", started.call({ 'HOME' => Dir.tmpdir })
    assert_equal "start: loaded\n", started.call({ 'GEM_HOME' => File.join(@repo, 'gems') })
    assert_equal "start: loaded\n", started.call({ 'RUBYOPT' => '-W0' })
    assert_equal "start: loaded\n", started.call({}, File.join(@repo, 'no-record'))
    # A gem installed since: its specification is in a directory the record lists.
    dir = File.readlines(record, chomp: true).map { |line| line.split("\t") }.find { |kind, _| kind == 'specifications' }[1]
    changed = File.join(@repo, 'changed-record')
    File.write(changed, File.read(record).sub("specifications\t#{dir}", "specifications\t#{dir}\tinstalled-since-1.0.gemspec"))
    assert_equal "start: loaded\n", started.call({}, changed)
  end
end

# The YAML library loads when first used (lib/opschain/lazy_yaml.rb), and an action may use it as if loaded.
class LazyYamlTest < Minitest::Test
  include RunnerTest

  def test_an_action_uses_yaml_without_requiring_it_and_steps_without_yaml_never_load_it
    write_context
    write('actions.rb', <<~RUBY)
      loaded = -> { $LOADED_FEATURES.any? { |feature| feature.end_with?('/psych.rb') } }
      action :none do
        puts "psych: \#{loaded.call}"
      end
      action :dump do
        puts({ 'a' => [1, 2] }.to_yaml)
        puts YAML.safe_load("b: 2").inspect
        puts Psych::VERSION.empty?
        puts "psych: \#{loaded.call}"
      end
    RUBY
    none = action('none')
    assert none.success?, none.stderr
    assert_equal "psych: false\n", none.stdout
    dump = action('dump')
    assert dump.success?, dump.stderr
    assert_equal "---\na:\n- 1\n- 2\n{\"b\"=>2}\nfalse\npsych: true\n", dump.stdout
  end
end

# A command copied away from the library (as an image might install it) still runs: RubyGems loads at once.
class CopiedCommandTest < Minitest::Test
  include RunnerTest

  def test_a_copy_of_opschain_action_elsewhere_runs_its_action
    write_context
    write('actions.rb', <<~RUBY)
      action(:hello) { puts "hello, rubygems \#{Object.autoload?(:Gem) ? 'deferred' : 'loaded'}" }
    RUBY
    copy = File.join(@repo, 'elsewhere', 'opschain-action')
    FileUtils.mkdir_p(File.dirname(copy))
    FileUtils.cp(File.join(BIN, 'opschain-action'), copy)
    stdout, stderr, status = Open3.capture3({ 'RUBYLIB' => LIB, 'OPSCHAIN_REPO_DIR' => @repo, 'HOME' => @repo }, copy, 'hello', chdir: @repo)
    assert status.success?, stderr
    assert_equal "hello, rubygems loaded\n", stdout
  end
end

# The image's compiled files (lib/opschain/compiled_code.rb): used while their sources are unchanged.
class CompiledCodeTest < Minitest::Test
  include RunnerTest

  def ruby_script(script, *args)
    stdout, stderr, status = Open3.capture3({ 'RUBYLIB' => nil, 'RUBYOPT' => nil }, 'ruby', '--disable-gems', '-I', LIB, '-e', script, *args, chdir: @repo)
    assert status.success?, stderr
    stdout
  end

  def test_a_compiled_file_loads_while_its_source_is_unchanged_and_a_changed_one_is_compiled_again
    source = File.join(@repo, 'sample.rb')
    compiled = File.join(@repo, 'compiled')
    File.write(source, "SAMPLE = 'first'\n")
    ruby_script("require 'opschain/compiled_code'; require ARGV[0]; OpsChain::CompiledCode.compile(ARGV[1])", source, compiled)
    assert File.file?(File.join(compiled, OpsChain::CompiledCode.entry_name(source)))

    served = <<~RUBY
      require 'opschain/compiled_code'
      OpsChain::CompiledCode.use(ARGV[1])
      puts OpsChain::CompiledCode.load(ARGV[1], ARGV[0]).class
      require ARGV[0]
      puts SAMPLE
    RUBY
    assert_equal "RubyVM::InstructionSequence\nfirst\n", ruby_script(served, source, compiled)

    # The compiled entry is made to say something else: what a require gives shows which one was loaded.
    entry = File.join(compiled, OpsChain::CompiledCode.entry_name(source))
    stamp = File.binread(entry).split("\n", 2).first
    File.binwrite(entry, "#{stamp}\n".b + RubyVM::InstructionSequence.compile("SAMPLE = 'compiled'", source).to_binary)
    assert_equal "RubyVM::InstructionSequence\ncompiled\n", ruby_script(served, source, compiled)

    File.write(source, "SAMPLE = 'second'\n")
    assert_equal "NilClass\nsecond\n", ruby_script(served, source, compiled)
    # Compiled again, then changed to a source of the same size: its mtime tells.
    ruby_script("require 'opschain/compiled_code'; require ARGV[0]; OpsChain::CompiledCode.compile(ARGV[1])", source, compiled)
    File.write(source, "SAMPLE = 'secont'\n")
    File.utime(Time.now + 5, Time.now + 5, source)
    assert_equal "NilClass\nsecont\n", ruby_script(served, source, compiled)
  end

  def test_an_entry_from_another_ruby_or_garbage_is_compiled_as_usual
    source = File.join(@repo, 'sample.rb')
    compiled = File.join(@repo, 'compiled')
    File.write(source, "SAMPLE = 'source'\n")
    FileUtils.mkdir_p(compiled)
    stamp = "#{File.size(source)} #{File.mtime(source).to_i}"
    File.binwrite(File.join(compiled, OpsChain::CompiledCode.entry_name(source)), "#{stamp}\nnot an instruction sequence")
    script = "require 'opschain/compiled_code'; OpsChain::CompiledCode.use(ARGV[1]); require ARGV[0]; puts SAMPLE"
    assert_equal "source\n", ruby_script(script, source, compiled)
  end
end
